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
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from itertools import accumulate

import orjson

from hybrid.sim.config import Faults, ModelProfile, Script
from hybrid.tokens import TOKEN_PATTERN, prompt_tokens

#: Content chunks per streamed answer; decoding is also paced in this many steps.
STREAM_PIECES = 8

_WORDS = (
    "the model reads each prompt and answers with a short grounded note about the data it was "
    "given while queries run together so the wall time is close to the slowest one rather than "
    "the sum latency throughput tokens budget retry window slot queue answer result risk cost "
    "plan check review summary detail estimate value measure report table stage batch parallel "
    "sequential concurrent request response server client seed signal noise trend sample"
).split()


_CAPITALIZED = [word.capitalize() for word in _WORDS]
_SPACED = [" " + word for word in _WORDS]
_WORD_COUNT = len(_WORDS)
_WORD_BITS = _WORD_COUNT.bit_length()


def digest(*parts: object) -> int:
    """A stable 64-bit integer from ``parts`` (Python's ``hash`` is salted per process)."""
    text = "\x1f".join(map(repr, parts)).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "big")


def generated_tokens(rng: random.Random, n_tokens: int) -> list[str]:
    """Exactly ``n_tokens`` tokens of plausible filler: words, with a full stop every 8-16 words.
    Each item is one token under the kit's rule with the space before it, so the text is their
    join and its token boundaries are known without tokenising it again.

    This is most of the simulator's work per answer, so it draws the very numbers ``rng.choice``
    and ``rng.randint(8, 16)`` would, in the same order (seeded answers do not change), without
    their calls: both are ``_randbelow(n)``, which draws ``getrandbits(n.bit_length())`` until the
    value is below ``n``.  ``tests/test_sim.py`` checks the texts against ``rng.choice``.
    """
    bits = rng.getrandbits
    tokens: list[str] = []
    append = tokens.append
    words_in_sentence = 0
    sentence_length = _sentence_length(bits)
    last = n_tokens - 1
    for i in range(n_tokens):
        if words_in_sentence and (words_in_sentence >= sentence_length or i == last):
            append(".")
            words_in_sentence = 0
            sentence_length = _sentence_length(bits)
            continue
        r = bits(_WORD_BITS)
        while r >= _WORD_COUNT:
            r = bits(_WORD_BITS)
        if words_in_sentence:
            append(_SPACED[r])
        else:
            append(" " + _CAPITALIZED[r] if tokens else _CAPITALIZED[r])
        words_in_sentence += 1
    return tokens


def _sentence_length(bits: Callable[[int], int]) -> int:
    """``randint(8, 16)``, drawn as ``random`` draws it."""
    r = bits(4)
    while r >= 9:
        r = bits(4)
    return 8 + r


@dataclass(frozen=True, slots=True)
class Reply:
    """The simulated answer to one request (before timing and faults), computed once per distinct
    request: ``key`` identifies the request (for seeded timing and faults), ``pieces`` are its
    streamed chunks with their token counts."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    key: int
    pieces: tuple[tuple[str, int], ...]


class ReplyModel:
    """Answers for one simulator: scripted replies first, then seeded filler (JSON in json mode)."""

    def __init__(self, seed: int, scripts: tuple[Script, ...], profiles: Mapping[str, ModelProfile]) -> None:
        self._seed = seed
        self._profiles = profiles
        self._rng = random.Random()  # reseeded for each reply: one generator, not one per reply
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
        ends: list[int] | None = None  # where each token of the answer ends
        for pattern, scripted in self._scripts:
            if pattern.search(text):
                full = scripted
                break
        else:
            profile = self._profiles[model]
            rng = self._rng
            rng.seed(digest(self._seed, model, text, temperature))  # as random.Random(that) would start
            n = rng.randint(profile.min_completion_tokens, profile.max_completion_tokens)
            tokens = generated_tokens(rng, n)
            if json_mode:
                full = orjson.dumps({"answer": "".join(tokens)}).decode()
            else:
                full, ends = "".join(tokens), list(accumulate(map(len, tokens)))
        if ends is None:  # generated text knows its tokens; anything else is tokenised once
            ends = [m.end() for m in TOKEN_PATTERN.finditer(full)]
        n_prompt = prompt_tokens(text, n_messages)
        key = digest(model, text, temperature, max_tokens, json_mode)
        if max_tokens is not None and len(ends) > max_tokens:
            ends = ends[:max_tokens]
            text_out, finish = full[: ends[-1]], "length"
        else:
            text_out, finish = full, "stop"
        return Reply(text_out, n_prompt, len(ends), finish, key, split(text_out, ends, STREAM_PIECES))


def split(text: str, ends: list[int], parts: int) -> tuple[tuple[str, int], ...]:
    """Cut ``text``, whose tokens end at ``ends``, at token boundaries into at most ``parts``
    pieces that join back to it, each with its token count: ``step`` tokens each, the last piece
    the rest (and any trailing space)."""
    if not ends:
        return ((text, 0),) if text else ()
    n = len(ends)
    step = -(-n // parts)  # ceil
    cuts = [*ends[step - 1 : -1 : step], len(text)]  # where each piece ends
    starts = [0, *cuts[:-1]]
    counts = [step] * (len(cuts) - 1) + [n - step * (len(cuts) - 1)]
    return tuple(zip(map(text.__getitem__, map(slice, starts, cuts)), counts, strict=True))


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
