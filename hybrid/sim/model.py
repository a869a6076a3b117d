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
import threading
from collections import Counter, OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache

import orjson

from hybrid.sim.config import Faults, ModelProfile, Script
from hybrid.sim.prefix_cache import prompt_blocks
from hybrid.tokens import TOKEN_PATTERN, prompt_tokens, prompt_tokens_of

#: Content chunks per streamed answer; decoding is also paced in this many steps.
STREAM_PIECES = 8

_WORDS = (
    "the model reads each prompt and answers with a short grounded note about the data it was "
    "given while queries run together so the wall time is close to the slowest one rather than "
    "the sum latency throughput tokens budget retry window slot queue answer result risk cost "
    "plan check review summary detail estimate value measure report table stage batch parallel "
    "sequential concurrent request response server client seed signal noise trend sample"
).split()
#: What every generated answer starts with, so nobody reads filler as a broken model's answer.
SIMULATED = "Simulated answer:"
#: Tokens in the pool that answers are sliced from (longer answers wrap around it): 2**POOL_BITS.
POOL_BITS = 12
POOL_TOKENS = 1 << POOL_BITS


def digest(*parts: object) -> int:
    """A stable 64-bit integer from ``parts`` (Python's ``hash`` is salted per process)."""
    text = "\x1f".join(map(repr, parts)).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "big")


def _sentences(rng: random.Random, n_tokens: int) -> list[str]:
    """``n_tokens`` tokens of filler sentences (8 to 16 words, then a full stop), each token with
    the space before it, so the text is their join and its token boundaries are known."""
    tokens: list[str] = []
    while len(tokens) < n_tokens:
        words = [rng.choice(_WORDS) for _ in range(rng.randint(8, 16))]
        tokens += [" " + words[0].capitalize(), *(" " + word for word in words[1:]), "."]
    return tokens[:n_tokens]


#: The word pool, drawn once with a fixed seed: an answer is a seeded slice of it.
_POOL = tuple(_sentences(random.Random(20260101), POOL_TOKENS))


_local = threading.local()


def _generator() -> random.Random:
    """This thread's generator, reseeded per reply (making one per reply costs more than seeding
    it; one per thread, because simulators in different threads must not interleave draws)."""
    rng: random.Random | None = getattr(_local, "rng", None)
    if rng is None:
        rng = _local.rng = random.Random()
    return rng


def seeded_tokens(seed: int, low: int, high: int) -> list[str]:
    """The generated answer of a request seeded with ``seed``: ``randint(low, high)`` tokens of
    ``random.Random(seed)`` (so token counts, timings and costs depend on the request as they
    always did), which are :data:`SIMULATED`'s tokens and then a seeded slice of the word pool."""
    rng = _generator()
    rng.seed(seed)
    n = rng.randint(low, high)
    mark = _MARK[:n]
    left = n - len(mark)
    start = rng.getrandbits(POOL_BITS)
    tokens = list(mark)
    while left:
        piece = _POOL[start : start + left]
        tokens += piece
        left -= len(piece)
        start = 0
    return tokens


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
    #: The prompt's cache blocks (:func:`~hybrid.sim.prefix_cache.prompt_blocks`), when its model
    #: has a prefix cache.
    blocks: tuple[int, ...] = ()

    @property
    def pieces(self) -> tuple[tuple[str, int], ...]:
        """The streamed chunks with their token counts, cut when asked: only a streamed or paced
        answer needs them, and the cut was a sixth of a reply's cost at time scale 0."""
        if not self.tokens:  # no token at all: the text (if any) is one piece
            return ((self.text, 0),) if self.text else ()
        return split(self.tokens, STREAM_PIECES)


class ReplyModel:
    """Answers for one simulator: scripted replies first, then seeded filler or the echo of the
    request's last message (``answers``), as JSON in json mode."""

    def __init__(
        self,
        seed: int,
        scripts: tuple[Script, ...],
        profiles: Mapping[str, ModelProfile],
        *,
        answers: str = "filler",
    ) -> None:
        self._seed = seed
        #: Echo mode: the reply repeats the request's last message (the caller passes it only then).
        self.echo = answers == "echo"
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
        last: str = "",
    ) -> Reply:
        key = digest(model, text, temperature, max_tokens, json_mode)
        profile = self._profiles[model]
        if profile.prefix_cache_tokens:  # cut the prompt once, for its count and its cache blocks
            words = TOKEN_PATTERN.findall(text)
            n_prompt, blocks = prompt_tokens_of(len(words), n_messages), prompt_blocks(model, words)
        else:
            n_prompt, blocks = prompt_tokens(text, n_messages), ()
        for pattern, scripted in self._scripts:
            if pattern.search(text):
                tokens = cut_into_tokens(scripted)
                if not tokens:  # nothing the token rule counts (say, only spaces): sent as it is
                    return Reply(scripted, n_prompt, 0, "stop", key, (), blocks)
                break
        else:
            if self.echo:
                tokens = cut_into_tokens(f"Simulated echo: {last}")
            else:
                seed = digest(self._seed, model, text, temperature)
                tokens = seeded_tokens(seed, profile.min_completion_tokens, profile.max_completion_tokens)
            if json_mode:
                tokens = cut_into_tokens(orjson.dumps({"answer": "".join(tokens)}).decode())
        finish = "stop"
        if max_tokens is not None and len(tokens) > max_tokens:
            tokens, finish = tokens[:max_tokens], "length"
        return Reply("".join(tokens), n_prompt, len(tokens), finish, key, tuple(tokens), blocks)


def cut_into_tokens(text: str) -> list[str]:
    """``text`` cut after each of its tokens under the kit's rule, so the pieces join back to it:
    what precedes a token belongs to it, what follows the last token belongs to the last."""
    ends = [m.end() for m in TOKEN_PATTERN.finditer(text)]
    if not ends:
        return []
    ends[-1] = len(text)
    return list(map(text.__getitem__, map(slice, [0, *ends[:-1]], ends)))


#: :data:`SIMULATED` cut into tokens: the first tokens of every generated answer.
_MARK = tuple(cut_into_tokens(SIMULATED))


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


def pace(profile: ModelProfile, reply: Reply, *, seed: int, time_scale: float, cached: int = 0) -> Pace:
    """The seeded pace of one request under ``profile``, compressed by ``time_scale``; ``cached``
    prompt tokens came from the prefix cache and take no prefill."""
    if time_scale == 0:
        return Pace(0.0, 0.0, 0.0)
    jitter = 1.0
    if profile.jitter:
        jitter = random.Random(digest(seed, "latency", reply.key)).lognormvariate(0.0, profile.jitter)
    factor = jitter * time_scale
    ttft = profile.ttft_s + (reply.prompt_tokens - cached) / profile.prompt_tps
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
