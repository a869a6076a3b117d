"""The simulator's settings: model profiles, faults, capacity, rate limits, scripted replies.

Everything is a frozen dataclass with JSON round-tripping (:meth:`SimConfig.to_dict` /
:meth:`SimConfig.from_dict`), so the same config can start a server in this loop, in a thread,
or in another process (``hybrid sim --config FILE``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from hybrid.errors import ConfigError, check_choice, check_int, check_number

T = TypeVar("T")


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelProfile:
    """How fast one simulated model answers, in unscaled seconds.

    A request takes ``ttft_s + prompt_tokens / prompt_tps`` to its first token, then
    ``completion_tokens / completion_tps`` to stream the rest; the whole is multiplied by a seeded
    log-normal jitter of spread ``jitter``.  ``contention`` slows decoding when requests share the
    server: while ``k`` requests hold slots, each decodes at ``completion_tps / (1 + contention
    * (k - 1))`` (0 = perfectly parallel server, 1 = one shared decoder).

    ``prefix_cache_tokens`` gives the server a prefix (KV) cache of that many tokens, least recently
    used evicted (:mod:`hybrid.sim.prefix_cache`): a request whose leading tokens are cached skips
    their prefill and reports them as ``usage.prompt_tokens_details.cached_tokens``.  0 (the
    default) has no cache.
    """

    ttft_s: float
    prompt_tps: float
    completion_tps: float
    jitter: float = 0.05
    contention: float = 0.0
    min_completion_tokens: int = 24
    max_completion_tokens: int = 96
    prefix_cache_tokens: int = 0

    def __post_init__(self) -> None:
        check_number("ModelProfile(ttft_s=...)", self.ttft_s, minimum=0.0, unit="seconds")
        check_number("ModelProfile(prompt_tps=...)", self.prompt_tps, positive=True, unit="tokens per second")
        check_number("ModelProfile(completion_tps=...)", self.completion_tps, positive=True, unit="tokens per second")
        check_number("ModelProfile(jitter=...)", self.jitter, minimum=0.0)
        check_number("ModelProfile(contention=...)", self.contention, minimum=0.0)
        check_int("ModelProfile(min_completion_tokens=...)", self.min_completion_tokens, minimum=1)
        check_int("ModelProfile(max_completion_tokens=...)", self.max_completion_tokens, minimum=1)
        check_int("ModelProfile(prefix_cache_tokens=...) (0 = no cache)", self.prefix_cache_tokens, minimum=0)
        if not self.min_completion_tokens <= self.max_completion_tokens:
            raise ConfigError("ModelProfile needs 1 <= min_completion_tokens <= max_completion_tokens.")


#: Shipped profiles.  ``sim-small`` is a fast hosted small model; ``sim-large`` a slow large one
#: (0.4 s to first token, 50 completion tokens/s, as large hosted models measure);
#: ``gemma3-270m-cpu`` is fitted to llama.cpp serving Gemma 3 270M on this project's 2-core machine
#: (``benchmarks/real_server.py``; serve it with ``slots=8`` to match the real server).
PROFILES: Mapping[str, ModelProfile] = {
    "sim-small": ModelProfile(ttft_s=0.15, prompt_tps=8000.0, completion_tps=150.0, jitter=0.05),
    "sim-large": ModelProfile(ttft_s=0.4, prompt_tps=2500.0, completion_tps=50.0, jitter=0.08),
    "gemma3-270m-cpu": ModelProfile(
        ttft_s=0.0,
        prompt_tps=307.0,
        completion_tps=55.78,
        jitter=0.03,
        contention=0.545,
        min_completion_tokens=32,
        max_completion_tokens=32,
    ),
}


@dataclass(frozen=True, slots=True, kw_only=True)
class Faults:
    """Injected faults, each with its own probability per attempt (seeded, so reproducible).

    ``rate_limit`` answers 429 with Retry-After headers (``retry_after_s``, real seconds);
    ``rate_limit_bare`` answers 429 without them; ``server_error`` 500; ``unavailable`` 503;
    ``hang`` never answers (until the client gives up, or ``hang_s``); ``drop`` closes the
    connection without an answer; ``malformed`` sends a 200 whose JSON is cut; ``truncate`` cuts
    the stream (or body) midway; ``no_usage`` omits usage.  ``fail_first`` fails the first N
    attempts of each distinct request with ``fail_first_status``, so retry tests are exact.

    The Batch API has its own faults, drawn per line (or per batch) from the seed and the batch id,
    so a line resubmitted in a new batch draws again: ``batch_line_error`` puts a line in the error
    file (a 500), ``batch_line_missing`` leaves it out of both files, ``batch_expire`` lets a batch
    expire halfway (the lines done by then in the output file, the rest ``batch_expired``).
    """

    rate_limit: float = 0.0
    rate_limit_bare: float = 0.0
    server_error: float = 0.0
    unavailable: float = 0.0
    hang: float = 0.0
    drop: float = 0.0
    malformed: float = 0.0
    truncate: float = 0.0
    no_usage: float = 0.0
    fail_first: int = 0
    fail_first_status: int = 500
    retry_after_s: float = 1.0
    hang_s: float = 3600.0
    batch_line_error: float = 0.0
    batch_line_missing: float = 0.0
    batch_expire: float = 0.0

    KINDS = (
        "rate_limit",
        "rate_limit_bare",
        "server_error",
        "unavailable",
        "hang",
        "drop",
        "malformed",
        "truncate",
        "no_usage",
    )

    def __post_init__(self) -> None:
        rates = [
            check_number(f"Faults({kind}=...)", getattr(self, kind), minimum=0.0, maximum=1.0) for kind in self.KINDS
        ]
        check_int("Faults(fail_first=...)", self.fail_first, minimum=0)
        for kind in ("batch_line_error", "batch_line_missing", "batch_expire"):
            check_number(f"Faults({kind}=...)", getattr(self, kind), minimum=0.0, maximum=1.0)
        if self.batch_line_error + self.batch_line_missing > 1.0 + 1e-9:
            raise ConfigError("Faults(batch_line_error=..., batch_line_missing=...) must add up to at most 1.")
        check_number("Faults(retry_after_s=...)", self.retry_after_s, minimum=0.0, unit="seconds")
        check_number("Faults(hang_s=...)", self.hang_s, positive=True, unit="seconds")
        if sum(rates) > 1.0 + 1e-9:
            raise ConfigError("Fault rates must each be in [0, 1] and add up to at most 1.")
        if self.fail_first < 0 or self.fail_first_status not in (429, 500, 502, 503, 504):
            raise ConfigError("fail_first must be >= 0 and fail_first_status one of 429, 500, 502, 503, 504.")
        if self.retry_after_s < 0 or self.hang_s <= 0:
            raise ConfigError("retry_after_s must be >= 0 and hang_s > 0.")


@dataclass(frozen=True, slots=True, kw_only=True)
class Script:
    """A scripted reply: when ``pattern`` (a regular expression) is found in the prompt, answer ``reply``.

    A dict reply is sent as JSON text, which is what scenarios that parse answers want.
    """

    pattern: str
    reply: str | Mapping[str, Any]


#: What a request no script matches is answered with (see :class:`SimConfig`).
ANSWER_MODES = ("filler", "echo")


@dataclass(frozen=True, slots=True, kw_only=True)
class SimConfig:
    """Everything that shapes a simulator.

    ``time_scale`` multiplies every simulated duration (0 = answer at once, 0.1 = ten times
    faster than the profile).  ``slots`` requests are served at once; up to ``max_queue`` more
    wait for a slot (``None`` = unbounded), beyond that the server answers 503.  ``rpm``/``tpm``
    are per-key limits over a sliding ``limit_window_s`` (real seconds), answered with 429 and
    OpenAI's ``x-ratelimit-*`` headers.

    The Batch API (``/v1/files``, ``/v1/batches``) runs a batch's lines on ``slots`` workers at
    ``batch_slowdown`` times their live latency (a batch is low priority), after
    ``batch_validate_s`` of validation and before ``batch_finalize_s`` of finalizing, all
    multiplied by ``time_scale``; a file may hold at most ``batch_max_requests`` lines.

    ``answers`` is what a request no script matches gets: ``"filler"`` (the default), seeded filler
    text that starts with "Simulated answer:", its length drawn per request from the model's
    profile; or ``"echo"``, "Simulated echo:" and the request's last message, which is what a
    scorer, a template or a pipeline under test can check.
    """

    seed: int = 0
    time_scale: float = 1.0
    profiles: Mapping[str, ModelProfile] = field(default_factory=lambda: dict(PROFILES))
    slots: int = 128
    max_queue: int | None = None
    rpm: int | None = None
    tpm: int | None = None
    limit_window_s: float = 60.0
    faults: Faults = field(default_factory=Faults)
    scripts: tuple[Script, ...] = ()
    answers: str = "filler"
    batch_slowdown: float = 20.0
    batch_validate_s: float = 30.0
    batch_finalize_s: float = 10.0
    batch_max_requests: int = 50_000
    api_key: str | None = field(default=None, repr=False)
    host: str = "127.0.0.1"
    port: int = 0

    def __post_init__(self) -> None:
        check_int("SimConfig(seed=...)", self.seed)
        check_number("SimConfig(time_scale=...) (0 = no waiting at all)", self.time_scale, minimum=0.0)
        check_int("SimConfig(slots=...)", self.slots, minimum=1)
        if self.max_queue is not None:
            check_int("SimConfig(max_queue=...)", self.max_queue, minimum=0)
        for name in ("rpm", "tpm"):
            if getattr(self, name) is not None:
                check_int(f"SimConfig({name}=...)", getattr(self, name), minimum=1)
        check_number("SimConfig(limit_window_s=...)", self.limit_window_s, positive=True, unit="seconds")
        check_number("SimConfig(batch_slowdown=...)", self.batch_slowdown, minimum=0.0)
        for name in ("batch_validate_s", "batch_finalize_s"):
            check_number(f"SimConfig({name}=...)", getattr(self, name), minimum=0.0, unit="seconds")
        check_int("SimConfig(batch_max_requests=...)", self.batch_max_requests, minimum=1)
        check_choice("SimConfig(answers=...)", self.answers, ANSWER_MODES)
        check_int("SimConfig(port=...) (0 = any free port)", self.port, minimum=0, maximum=65535)
        if not self.profiles:
            raise ConfigError("SimConfig needs at least one model profile.")

    @property
    def default_model(self) -> str:
        return next(iter(self.profiles))

    def with_changes(self, **changes: Any) -> SimConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data.  The API key is left out: pass it separately (flag or env var)."""
        data = dataclasses.asdict(self)
        data.pop("api_key")
        data["scripts"] = [dataclasses.asdict(script) for script in self.scripts]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SimConfig:
        """Build a config from :meth:`to_dict` output or a hand-written JSON file."""
        data = _checked_fields(cls, data, "simulator settings")
        if "profiles" in data:
            profiles = data["profiles"]
            if not isinstance(profiles, Mapping):
                raise ConfigError("SimConfig profiles must be an object of model name -> profile fields.")
            data["profiles"] = {
                name: _build(ModelProfile, p, f"profile {name!r} settings") for name, p in profiles.items()
            }
        if "faults" in data:
            data["faults"] = _build(Faults, data["faults"], "faults")
        if "scripts" in data:
            data["scripts"] = tuple(_build(Script, s, "script fields") for s in data["scripts"])
        return cls(**data)


def _checked_fields(cls: type, data: object, what: str) -> dict[str, Any]:
    """``data`` as a dict, if it is a JSON object whose keys are all fields of dataclass ``cls``."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"The {what} must be a JSON object, got {data!r}.")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"Unknown {what} {unknown}; known: {sorted(known)}.")
    return dict(data)


def _build(cls: type[T], data: object, what: str) -> T:
    """Dataclass ``cls`` from a JSON object; any unknown or missing field is a ConfigError."""
    fields = _checked_fields(cls, data, what)
    try:
        return cls(**fields)
    except TypeError as exc:
        raise ConfigError(f"Bad {what}: {exc}") from None
