"""One token-counting rule, shared by the simulator and the client-side estimate.

Real tokenizers are model specific; the kit needs a rule that is cheap, deterministic and
roughly proportional to a BPE count.  A token here is a run of word characters or a single
punctuation mark.  The simulator counts with it, so its usage numbers are exact under this
rule; the backends use it only when a server sends no usage, and flag the result as estimated.
"""

from __future__ import annotations

import re

TOKEN_PATTERN = re.compile(r"\w+|[^\w\s]")
#: Prompt tokens a chat request costs beyond its text: per message, and once per request.
MESSAGE_OVERHEAD_TOKENS = 4
REQUEST_OVERHEAD_TOKENS = 2


def count_tokens(text: str) -> int:
    """Number of tokens in ``text`` under the kit's rule."""
    return sum(1 for _ in TOKEN_PATTERN.finditer(text))


def truncate_tokens(text: str, limit: int) -> str:
    """The prefix of ``text`` holding its first ``limit`` tokens."""
    if limit <= 0:
        return ""
    for index, match in enumerate(TOKEN_PATTERN.finditer(text), start=1):
        if index == limit:
            return text[: match.end()]
    return text


def count_message_tokens(messages: list[dict[str, object]]) -> int:
    """Prompt tokens of a chat request: the content tokens plus a fixed overhead per message."""
    total = 0
    for message in messages:
        content = message.get("content")
        if isinstance(content, str):
            total += count_tokens(content)
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    total += count_tokens(part["text"])
        total += MESSAGE_OVERHEAD_TOKENS
    return total + REQUEST_OVERHEAD_TOKENS
