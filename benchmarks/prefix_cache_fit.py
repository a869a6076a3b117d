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
squares through 0; the simulator's model says ``1000 / prompt_tps`` ms per token (the
``gemma3-270m-cpu`` profile's prefill rate).  Printed: each point, the fit, its error (RMS of the
residuals, and the largest), and the simulator's figure against it.

    .venv/bin/python benchmarks/prefix_cache_fit.py     (needs `make real`)
"""

from __future__ import annotations

import asyncio
import statistics
from typing import Any

import aiohttp

from hybrid import real, sim
from hybrid.provenance import machine_info

SHARED = (0, 64, 128, 192, 256, 320, 384)
PROMPT_WORDS = 448
REPEATS = 3
WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi".split()


def prompt(seed: int, shared: int) -> str:
    """``PROMPT_WORDS`` words, the first ``shared`` the same for every seed, the rest the seed's own."""
    common = [WORDS[i % len(WORDS)] + str(i) for i in range(shared)]
    own = [f"w{seed}x{i}" for i in range(PROMPT_WORDS - shared)]
    return " ".join(common + own)


async def timings(session: aiohttp.ClientSession, url: str, text: str, cache: bool) -> dict[str, Any]:
    body = {"messages": [{"role": "user", "content": text}], "max_tokens": 1, "cache_prompt": cache}
    async with session.post(url + "/chat/completions", json=body) as response:
        answer = await response.json()
    result: dict[str, Any] = answer["timings"]
    return result


async def main() -> None:
    info = machine_info()
    print(f"machine: {info['cpu_model']}, {info['cpu_count']} cores; commit {info['commit']}")
    points = []
    async with real.serve(slots=1) as server, aiohttp.ClientSession() as session:
        await timings(session, server.url, prompt(-1, 0), False)  # warm the process up
        seed = 0
        for shared in SHARED:
            for _ in range(REPEATS):
                seed += 1
                cold = await timings(session, server.url, prompt(seed, shared), False)
                seed += 1
                await timings(session, server.url, prompt(seed, shared), True)  # primes the slot
                seed += 1
                warm = await timings(session, server.url, prompt(seed, shared), True)
                saved = cold["prompt_ms"] - warm["prompt_ms"]
                points.append((shared, warm.get("cache_n", 0), cold["prompt_n"], saved))
                print(
                    f"shared {shared:3d} words: cache_n {warm.get('cache_n', 0):3d} of {cold['prompt_n']} tokens, "
                    f"prefill {cold['prompt_ms']:.0f} ms cold, {warm['prompt_ms']:.0f} ms warm, saved {saved:.0f} ms"
                )
    cached = [p[1] for p in points]
    saved = [p[3] for p in points]
    slope = sum(c * s for c, s in zip(cached, saved, strict=True)) / sum(c * c for c in cached)
    residuals = [s - slope * c for c, s in zip(cached, saved, strict=True)]
    rms = statistics.fmean(r * r for r in residuals) ** 0.5
    model = 1000.0 / sim.PROFILES["gemma3-270m-cpu"].prompt_tps
    print(f"fit: {slope:.3f} ms of prefill saved per cached token (through 0; {len(points)} points)")
    print(f"fit error: RMS {rms:.0f} ms, largest {max(abs(r) for r in residuals):.0f} ms")
    print(
        f"simulator (gemma3-270m-cpu, prompt_tps {sim.PROFILES['gemma3-270m-cpu'].prompt_tps:g}): {model:.3f} ms "
        f"per cached token, {model / slope - 1:+.0%} against the fit"
    )


if __name__ == "__main__":
    asyncio.run(main())
