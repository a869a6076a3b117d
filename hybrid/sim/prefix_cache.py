"""The simulator's prefix (KV) cache: prompts that start alike skip the prefill they share.

A serving engine keeps the attention state of prompts it has seen, in blocks of tokens, and a new
prompt whose leading blocks match skips their prefill (vLLM's automatic prefix caching; OpenAI's
prompt caching reports the skipped part as ``usage.prompt_tokens_details.cached_tokens``).  This
models that and no more: a prompt is cut into blocks of :data:`BLOCK_TOKENS` tokens under the kit's
token rule, each block named by a hash chained over every block before it (so a block matches only
under the same prefix), and the cache holds ``ModelProfile.prefix_cache_tokens`` worth of blocks,
evicting the least recently used.  A request's cached tokens are its leading blocks found in the
cache; then all its blocks are stored (or refreshed).

llama.cpp's own ``cache_prompt`` is simpler (each slot reuses the prompt it last served); what both
share, and what ``benchmarks/prefix_cache_fit.py`` fits against the real server, is the prefill
saved per cached token.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

#: Tokens per cache block (vLLM's default block size): only whole blocks are cached.
BLOCK_TOKENS = 16


def prompt_blocks(model: str, tokens: Sequence[str]) -> tuple[int, ...]:
    """The chained hashes of the whole blocks of ``tokens`` (a request's messages, joined, cut by
    the kit's token rule), for ``model``."""
    chain = hash(model)
    blocks = []
    for start in range(0, len(tokens) - BLOCK_TOKENS + 1, BLOCK_TOKENS):
        chain = hash((chain, *tokens[start : start + BLOCK_TOKENS]))
        blocks.append(chain)
    return tuple(blocks)


class PrefixCache:
    """An LRU of prompt blocks holding at most ``capacity_tokens`` tokens (see the module docstring)."""

    def __init__(self, capacity_tokens: int) -> None:
        self._capacity = capacity_tokens // BLOCK_TOKENS
        self._blocks: OrderedDict[int, None] = OrderedDict()

    def take(self, blocks: tuple[int, ...]) -> int:
        """Prefill ``blocks``: the tokens of their leading run that were cached, then all of them stored."""
        hits = 0
        for block in blocks:
            if block not in self._blocks:
                break
            hits += 1
        for block in blocks:
            self._blocks[block] = None
            self._blocks.move_to_end(block)
        while len(self._blocks) > self._capacity:
            self._blocks.popitem(last=False)
        return hits * BLOCK_TOKENS
