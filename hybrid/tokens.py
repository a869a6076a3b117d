"""One token-counting rule, shared by the simulator and the client-side estimate.

Real tokenizers are model specific; the kit needs a rule that is cheap, deterministic and
roughly proportional to a BPE count.  A token here is a run of word characters or a single
punctuation mark.  The simulator counts with it, so its usage numbers are exact under this
rule; the backends use it only when a server sends no usage, and flag the result as estimated.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

TOKEN_PATTERN = re.compile(r"\w+|[^\w\s]")
#: Prompt tokens a chat request costs beyond its text: per message, and once per request.
MESSAGE_OVERHEAD_TOKENS = 4
REQUEST_OVERHEAD_TOKENS = 2


def count_tokens(text: str) -> int:
    """Number of tokens in ``text`` under the kit's rule."""
    return len(TOKEN_PATTERN.findall(text))


def message_text(messages: Sequence[Mapping[str, object]]) -> str:
    """All the text of a chat request's messages: string contents and the text parts of arrays."""
    parts: list[str] = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts.extend(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return "\n".join(parts)


def prompt_tokens(text: str, n_messages: int) -> int:
    """Prompt tokens of a chat request whose messages hold ``text``: its tokens plus the overheads."""
    return prompt_tokens_of(count_tokens(text), n_messages)


def prompt_tokens_of(text_tokens: int, n_messages: int) -> int:
    """Prompt tokens of a chat request of ``n_messages`` messages holding ``text_tokens`` tokens of text."""
    return text_tokens + MESSAGE_OVERHEAD_TOKENS * n_messages + REQUEST_OVERHEAD_TOKENS


def count_message_tokens(messages: Sequence[Mapping[str, object]]) -> int:
    """Prompt tokens of a chat request (a newline between parts is no token, so joining is exact)."""
    return prompt_tokens(message_text(messages), len(messages))
