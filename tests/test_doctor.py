"""``hybrid doctor`` against the simulator over loopback: a good endpoint, a refused key, an
unknown model, a server that is down and no key at all, each with its fix; never the whole key."""

from __future__ import annotations

import socket

import pytest

from hybrid import sim
from hybrid.cli import main
from hybrid.doctor import Finding, examine

KEY = "sk-test-abcdefghijklmnop"


def checks(findings: list[Finding]) -> dict[str, tuple[str, str | None]]:
    return {f.check: (f.found, f.fix) for f in findings}


async def test_a_good_endpoint_reports_every_check_and_a_masked_key() -> None:
    async with sim.serve(sim.SimConfig(seed=1, time_scale=0.0, api_key=KEY, rpm=600)) as server:
        found = checks(await examine(server.url, KEY, "sim-small"))
    assert all(fix is None for _, fix in found.values()), found
    assert list(found) == ["endpoint", "key", "reachable", "model", "latency", "streaming", "rate limits"]
    assert found["key"][0] == "sk-...mnop" and KEY not in str(found)
    assert found["model"][0].startswith("sim-small answered")
    assert found["streaming"][0].startswith("yes, first token after")
    assert "requests left" in found["rate limits"][0]  # the simulator sends x-ratelimit-* when it limits


@pytest.mark.parametrize(
    ("key", "model", "check", "fix"),
    [
        ("sk-wrong-key-0123456789", "sim-small", "key", "set OPENAI_API_KEY (or --api-key) to a key it accepts"),
        (KEY, "no-such-model", "model", "set OPENAI_MODEL (or --model) to one it serves"),
    ],
)
async def test_a_refusal_names_its_fix(key: str, model: str, check: str, fix: str) -> None:
    async with sim.serve(sim.SimConfig(seed=1, time_scale=0.0, api_key=KEY)) as server:
        findings = await examine(server.url, key, model)
    assert findings[-1].check == check and findings[-1].fix == fix
    assert key not in "\n".join(map(str, findings))


async def test_a_server_that_is_down_or_no_key(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # free once closed: nothing listens there
    down = checks(await examine(f"http://127.0.0.1:{port}/v1", KEY, "m"))
    assert down["reachable"][0].startswith("no: Cannot reach") and "Is the server running?" in str(down["reachable"][1])
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    keyless = checks(await examine(f"http://127.0.0.1:{port}/v1", None, "m"))
    assert keyless["key"] == ("none", "set OPENAI_API_KEY (or pass --api-key); any word for a local server")


def test_the_command_exits_1_when_something_needs_fixing(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert main(["doctor", "--base-url", f"http://127.0.0.1:{port}/v1", "--api-key", KEY, "--model", "m"]) == 1
    out = capsys.readouterr().out
    assert "!! reachable" in out and "fix: " in out and KEY not in out
