"""The simulator's prefix cache against llama.cpp's own prompt cache, with the real Gemma model.

llama.cpp (``cache_prompt``, on by default) keeps each slot's last prompt and reuses the longest
common prefix of the next prompt sent to that slot; the simulator keeps an LRU of prompt blocks
(``ModelProfile(prefix_cache_tokens=N)``, :mod:`hybrid.sim.prefix_cache`).  Their bookkeeping
differs, so what is fitted is what both share: **the prefill time saved per cached token**.

With one slot (every request meets the previous one's cache), for each shared length L:

* cold: a prompt of about 448 tokens with ``cache_prompt: false`` → its ``prompt_ms``;
* warm: a request sharing the first L tokens primes the slot, then the same prompt with
  ``cache_prompt: true`` → ``cache_n`` (tokens reused) and its ``prompt_ms``.

The saving (cold minus warm ``prompt_ms``) is fitted as ``ms_per_token * cache_n`` by least
squares through 0.  The simulator's shape says a cached token saves exactly one token's prefill
(``1 / prompt_tps``): the fit is set against the same server's cold prefill per token, and against
the ``gemma3-270m-cpu`` profile's rate.  Printed: each point, the fit, its error (RMS of the
residuals, and the largest), and both comparisons.

    .venv/bin/python benchmarks/prefix_cache_fit.py     (needs `make real`)
"""

from __future__ import annotations

import asyncio
import os
import random
import statistics
from typing import Any

import aiohttp

from hybrid import real, sim
from hybrid.provenance import machine_info

SHARED = (0, 64, 128, 192, 256, 320, 384)
PROMPT_WORDS = 448
REPEATS = 3
#: Common words, about one Gemma token each.
WORDS = (
    "time year people way day man thing woman life child world school state family student group country "
    "problem hand part place case week company system program question work government number night point "
    "home water room mother area money story fact month lot right study book eye job word business issue"
).split()


def prompt(seed: int, shared: int) -> str:
    """``PROMPT_WORDS`` words, the first ``shared`` the same for every seed, the rest the seed's own."""
    common = [WORDS[i % len(WORDS)] for i in range(shared)]
    own = random.Random(seed).choices(WORDS, k=PROMPT_WORDS - shared)
    return " ".join(common + own)


async def timings(session: aiohttp.ClientSession, url: str, text: str, cache: bool) -> dict[str, Any]:
    body = {"messages": [{"role": "user", "content": text}], "max_tokens": 1, "cache_prompt": cache}
    async with session.post(url + "/chat/completions", json=body) as response:
        answer = await response.json()
        if "timings" not in answer:
            raise RuntimeError(f"llama-server answered {response.status}: {answer}")
    result: dict[str, Any] = answer["timings"]
    return result


async def main() -> None:
    info = machine_info()
    print(f"machine: {info['cpu_model']}, {info['cpu_count']} cores; commit {info['commit']}")
    # Gemma 3 attends through a sliding window, and llama.cpp reuses a sliding-window cache for a
    # shared prefix only when it keeps it whole (--swa-full; without it every cache_n is 0).
    os.environ["LLAMA_ARG_SWA_FULL"] = "1"
    async with real.serve(slots=1) as server:
        headers = {"Authorization": f"Bearer {server.api_key}"}
        async with aiohttp.ClientSession(headers=headers) as session:
            points = await measure(session, server.url)
    report(points)


async def measure(session: aiohttp.ClientSession, url: str) -> list[tuple[int, float, float, int]]:
    """(cache_n, prefill ms saved, cold prefill ms, cold prompt_n) per repeat of each shared length, each printed."""
    await timings(session, url, prompt(-1, 0), False)  # warm the process up
    points = []
    seed = 0
    for shared in SHARED:
        for _ in range(REPEATS):
            cold = await timings(session, url, prompt(seed := seed + 1, shared), False)
            await timings(session, url, prompt(seed := seed + 1, shared), True)  # primes the slot
            warm = await timings(session, url, prompt(seed := seed + 1, shared), True)
            saved = cold["prompt_ms"] - warm["prompt_ms"]
            points.append((int(warm.get("cache_n", 0)), saved, cold["prompt_ms"], int(cold["prompt_n"])))
            print(
                f"shared {shared:3d} words: cache_n {warm.get('cache_n', 0):3d} of {cold['prompt_n']} tokens, "
                f"prefill {cold['prompt_ms']:.0f} ms cold, {warm['prompt_ms']:.0f} ms warm, saved {saved:.0f} ms"
            )
    return points


def report(points: list[tuple[int, float, float, int]]) -> None:
    """The least-squares slope through 0, its residuals, and the simulator's assumption against it:
    a cached token saves its prefill, at the rate the same server prefills a cold prompt."""
    cached = [p[0] for p in points]
    saved = [p[1] for p in points]
    slope = sum(c * s for c, s in zip(cached, saved, strict=True)) / sum(c * c for c in cached)
    residuals = [s - slope * c for c, s in zip(cached, saved, strict=True)]
    rms = statistics.fmean(r * r for r in residuals) ** 0.5
    cold_rate = sum(p[2] for p in points) / sum(p[3] for p in points)
    profile = sim.PROFILES["gemma3-270m-cpu"]
    print(f"fit: {slope:.3f} ms of prefill saved per cached token (least squares through 0; {len(points)} points)")
    print(f"fit error: RMS {rms:.0f} ms, largest {max(abs(r) for r in residuals):.0f} ms")
    print(
        f"the simulator's shape, a cached token saves one token of prefill: {cold_rate:.3f} ms per token cold on this "
        f"server, {cold_rate / slope - 1:+.0%} against the fit"
    )
    rate = 1000.0 / profile.prompt_tps
    print(
        f"the gemma3-270m-cpu profile (prompt_tps {profile.prompt_tps:g}, fitted under 8 slots): "
        f"{rate:.3f} ms per token, {rate / slope - 1:+.0%} against the fit"
    )


if __name__ == "__main__":
    asyncio.run(main())
