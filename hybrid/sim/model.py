"""The simulator's deterministic model: what a request answers, how long it takes, which fault hits it.

Every random choice comes from a ``random.Random`` seeded with the config seed and a digest of the
request (model, messages, temperature, and for faults the attempt number of that exact request).
The same request therefore gets the same answer, timing and fault in any order and under any
concurrency, which is what notebook regression tests and exact retry tests rely on.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections import Counter, OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from types import ModuleType

import orjson

from hybrid.sim.config import Faults, ModelProfile, Script
from hybrid.tokens import TOKEN_PATTERN, prompt_tokens

_compiled: ModuleType | None
try:  # the compiled filler (setup.py builds it when it can); else the Python below, same texts
    from hybrid.sim import _filler as _compiled
except ImportError:  # pragma: no cover - depends on the install
    _compiled = None

#: Content chunks per streamed answer; decoding is also paced in this many steps.
STREAM_PIECES = 8

_WORDS = (
    "the model reads each prompt and answers with a short grounded note about the data it was "
    "given while queries run together so the wall time is close to the slowest one rather than "
    "the sum latency throughput tokens budget retry window slot queue answer result risk cost "
    "plan check review summary detail estimate value measure report table stage batch parallel "
    "sequential concurrent request response server client seed signal noise trend sample"
).split()


_WORD_COUNT = len(_WORDS)
# Every draw below is ``random``'s ``_randbelow(n)``: ``getrandbits(n.bit_length())`` until the value
# is below ``n``.  For up to 8 bits that value is the top byte of one 32-bit Mersenne Twister word
# shifted right, so a draw is accepted or rejected on that byte alone: a word is byte >> 1 (72 words,
# 7 bits) and a sentence's length ``randint(8, 16)`` is 8 + (byte >> 4) (4 bits); both accept exactly
# the bytes below 144.  The generator therefore takes a block of words at once and deletes the
# rejected bytes in C, which leaves one byte per accepted draw, in order.  (Another word count would
# change every seeded answer, and break this and ``_filler.c``'s ``ACCEPTED_BELOW``; ``tests/test_sim.py``
# compares against ``rng.choice`` and the compiled filler against this code.)
_ACCEPTED_BELOW = _WORD_COUNT << (8 - _WORD_COUNT.bit_length())
_REJECTED = bytes(range(_ACCEPTED_BELOW, 256))
_FIRST = [_WORDS[b >> 1].capitalize() for b in range(_ACCEPTED_BELOW)]  # indexed by accepted byte
_OPENING = [" " + word for word in _FIRST]
_SPACED = [" " + _WORDS[b >> 1] for b in range(_ACCEPTED_BELOW)]


def digest(*parts: object) -> int:
    """A stable 64-bit integer from ``parts`` (Python's ``hash`` is salted per process)."""
    text = "\x1f".join(map(repr, parts)).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "big")


def generated_tokens(rng: random.Random, n_tokens: int) -> list[str]:
    """Exactly ``n_tokens`` tokens of plausible filler: words, with a full stop every 8-16 words.
    Each item is one token under the kit's rule with the space before it, so the text is their
    join and its token boundaries are known without tokenising it again.

    This was a fifth of the simulator's work per request, so it draws the very numbers ``rng.choice``
    and ``rng.randint(8, 16)`` would, in the same order (seeded answers do not change), a block at
    a time (see ``_ACCEPTED_BELOW``); ``_filler.c`` does the same compiled (:func:`seeded_tokens`).
    ``tests/test_sim.py`` checks the texts against ``rng.choice``.
    """
    draws = _accepted_draws(rng, n_tokens + 1)  # a sentence of k tokens takes k draws; the last one more
    tokens: list[str] = []
    at, left = 0, n_tokens
    while left:
        words = 8 + (draws[at] >> 4)  # the sentence's length; at the end of the answer, what is left:
        if words >= left:  # its last token is a full stop, unless it is the only one
            words = left - 1 or 1
        tokens.append(_OPENING[draws[at + 1]] if tokens else _FIRST[draws[at + 1]])
        tokens.extend(map(_SPACED.__getitem__, draws[at + 2 : at + 1 + words]))
        at, left = at + 1 + words, left - words
        if left:
            tokens.append(".")
            left -= 1
    return tokens


def seeded_tokens(seed: int, low: int, high: int) -> list[str]:
    """The filler a request seeded with ``seed`` gets: ``generated_tokens`` of ``random.Random(seed)``,
    ``randint(low, high)`` tokens long.  Compiled (``_filler.c``, the same numbers and tokens) when
    the extension was built, else this module's Python; ``tests/test_sim.py`` compares the two."""
    if _compiled is not None:
        tokens: list[str] = _compiled.seeded_tokens(seed, low, high, _FIRST, _OPENING, _SPACED, ".")
        return tokens
    rng = random.Random(seed)  # one per reply: simulators in different threads share this module
    return generated_tokens(rng, rng.randint(low, high))


def _accepted_draws(rng: random.Random, count: int) -> bytes:
    """The top bytes of ``rng``'s next accepted draws, at least ``count`` of them, in order."""
    draws = b""
    while len(draws) < count:
        block = (count - len(draws)) * 16 // 9 + 16  # 9 in 16 draws are accepted
        draws += rng.getrandbits(32 * block).to_bytes(4 * block, "little")[3::4].translate(None, _REJECTED)
    return draws


@dataclass(frozen=True, slots=True)
class Reply:
    """The simulated answer to one request (before timing and faults), computed once per distinct
    request: ``key`` identifies the request (for seeded timing and faults), ``tokens`` are the
    text cut at its token boundaries (they join back to it)."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    key: int
    tokens: tuple[str, ...]

    @property
    def pieces(self) -> tuple[tuple[str, int], ...]:
        """The streamed chunks with their token counts, cut when asked: only a streamed or paced
        answer needs them, and the cut was a sixth of a reply's cost at time scale 0."""
        if not self.tokens:  # no token at all: the text (if any) is one piece
            return ((self.text, 0),) if self.text else ()
        return split(self.tokens, STREAM_PIECES)


class ReplyModel:
    """Answers for one simulator: scripted replies first, then seeded filler (JSON in json mode)."""

    def __init__(self, seed: int, scripts: tuple[Script, ...], profiles: Mapping[str, ModelProfile]) -> None:
        self._seed = seed
        self._profiles = profiles
        self._scripts = [
            (re.compile(s.pattern), s.reply if isinstance(s.reply, str) else orjson.dumps(s.reply).decode())
            for s in scripts
        ]
        self.reply = lru_cache(maxsize=4096)(self._reply)

    def _reply(
        self,
        model: str,
        text: str,
        n_messages: int,
        max_tokens: int | None,
        temperature: float,
        json_mode: bool,
    ) -> Reply:
        key = digest(model, text, temperature, max_tokens, json_mode)
        n_prompt = prompt_tokens(text, n_messages)
        for pattern, scripted in self._scripts:
            if pattern.search(text):
                tokens = cut_into_tokens(scripted)
                if not tokens:  # nothing the token rule counts (say, only spaces): sent as it is
                    return Reply(scripted, n_prompt, 0, "stop", key, ())
                break
        else:
            profile = self._profiles[model]
            seed = digest(self._seed, model, text, temperature)
            tokens = seeded_tokens(seed, profile.min_completion_tokens, profile.max_completion_tokens)
            if json_mode:
                tokens = cut_into_tokens(orjson.dumps({"answer": "".join(tokens)}).decode())
        finish = "stop"
        if max_tokens is not None and len(tokens) > max_tokens:
            tokens, finish = tokens[:max_tokens], "length"
        return Reply("".join(tokens), n_prompt, len(tokens), finish, key, tuple(tokens))


def cut_into_tokens(text: str) -> list[str]:
    """``text`` cut after each of its tokens under the kit's rule, so the pieces join back to it:
    what precedes a token belongs to it, what follows the last token belongs to the last."""
    ends = [m.end() for m in TOKEN_PATTERN.finditer(text)]
    if not ends:
        return []
    ends[-1] = len(text)
    return list(map(text.__getitem__, map(slice, [0, *ends[:-1]], ends)))


def split(tokens: tuple[str, ...], parts: int) -> tuple[tuple[str, int], ...]:
    """Join ``tokens`` into at most ``parts`` pieces at token boundaries, each with its token
    count: ``step`` tokens each, the last piece the rest."""
    n = len(tokens)
    step = -(-n // parts)  # ceil
    texts = ["".join(tokens[i : i + step]) for i in range(0, n, step)]
    counts = [step] * len(texts)
    counts[-1] = n - step * (len(texts) - 1)
    return tuple(zip(texts, counts, strict=True))


@dataclass(frozen=True, slots=True)
class Pace:
    """How fast one request goes, in real seconds: time to first token, then seconds per token.

    Decoding is paced chunk by chunk with the number of requests sharing the server *at that
    moment* (:meth:`decode_s`), so a burst of requests slows down together, as a batching server
    does, instead of the first one to arrive running alone.
    """

    ttft_s: float
    token_s: float
    contention: float

    @property
    def instant(self) -> bool:
        """No time passes at all (time scale 0)."""
        return self.ttft_s == 0 and self.token_s == 0

    def decode_s(self, tokens: int, sharing: int) -> float:
        return tokens * self.token_s * (1.0 + self.contention * max(0, sharing - 1))


def pace(profile: ModelProfile, reply: Reply, *, seed: int, time_scale: float) -> Pace:
    """The seeded pace of one request under ``profile``, compressed by ``time_scale``."""
    if time_scale == 0:
        return Pace(0.0, 0.0, 0.0)
    jitter = 1.0
    if profile.jitter:
        jitter = random.Random(digest(seed, "latency", reply.key)).lognormvariate(0.0, profile.jitter)
    factor = jitter * time_scale
    ttft = profile.ttft_s + reply.prompt_tokens / profile.prompt_tps
    return Pace(ttft * factor, factor / profile.completion_tps, profile.contention)


class FaultPlan:
    """Decides, per attempt, which fault (if any) a request meets, and counts what it injected.

    The attempt number of each distinct request is remembered for the ``ATTEMPTS_KEPT`` most
    recently seen requests only, so a long soak of distinct prompts holds bounded memory; a request
    not seen for that long starts again at attempt 0.
    """

    ATTEMPTS_KEPT = 65536

    def __init__(self, faults: Faults, seed: int) -> None:
        self.faults = faults
        self._seed = seed
        self._attempts: OrderedDict[int, int] = OrderedDict()
        self.injected: Counter[str] = Counter()
        self._active = faults.fail_first > 0 or any(getattr(faults, kind) for kind in Faults.KINDS)

    def draw(self, request_key: int, *, stream: bool) -> str | None:
        if not self._active:
            return None
        attempt = self._attempts.pop(request_key, 0)
        self._attempts[request_key] = attempt + 1
        if len(self._attempts) > self.ATTEMPTS_KEPT:
            self._attempts.popitem(last=False)
        if attempt < self.faults.fail_first:
            kind: str | None = "fail_first"
        else:
            u = random.Random(digest(self._seed, "fault", request_key, attempt)).random()
            kind = None
            for name in Faults.KINDS:
                u -= getattr(self.faults, name)
                if u < 0:
                    kind = name
                    break
        if kind is not None:
            self.injected[kind] += 1
        return kind
