"""The command line answers a user's mistakes in one line and exit code 2, never a traceback, and
never creates a file it was only asked to read."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from hybrid import Store
from hybrid.cli import build_parser, main
from hybrid.testing import write_large_run


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    path = tmp_path / "runs.sqlite"
    with Store(path) as store:
        write_large_run(store, "first", rows=30, text_bytes=20)
        write_large_run(store, "second", rows=3, text_bytes=20)
    return path


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        yield int(held.getsockname()[1])


def one_line_error(capsys: pytest.CaptureFixture[str], command: str) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith(f"hybrid {command}: ") and err.count("\n") == 1, err
    return err


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["runs", "compare", "first", "first"], "compare needs two different runs"),
        (["runs", "export", "first", "/nonexistent/dir/out.csv"], "No such file or directory"),
        (["runs", "show", "nope"], "nope"),
        (["report", "nope"], "No run named 'nope'"),
    ],
)
def test_a_mistake_is_one_line_and_exit_2(
    store_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], says: str
) -> None:
    assert main([*argv[:1], "--store", str(store_path), *argv[1:]]) == 2
    assert says in one_line_error(capsys, argv[0])


@pytest.mark.parametrize(
    "argv",
    [["runs", "list"], ["runs", "show", "x"], ["report", "x"], ["view"], ["bench", "diff", "a", "b"]],
)
def test_commands_that_read_a_store_never_create_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    typo = tmp_path / "typo.sqlite"
    assert main([*argv, "--store", str(typo)]) == 2
    assert f"No run store at '{typo}'" in one_line_error(capsys, " ".join(argv[:2]) if argv[0] == "bench" else argv[0])
    assert list(tmp_path.iterdir()) == []


def test_the_store_option_goes_before_or_after_the_action(store_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["runs", "--store", str(store_path), "list"]) == 0
    before = capsys.readouterr().out
    assert main(["runs", "list", "--store", str(store_path)]) == 0
    assert capsys.readouterr().out == before


def test_runs_list_is_a_table_for_a_terminal(
    store_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["runs", "list", "--store", str(store_path)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:3] == ["name", "mode", "status"] and [line.split()[0] for line in table[1:]] == [
        "first",
        "second",
    ]
    started = table[1].split()[3:5]  # date and time, to the second
    assert len(started[0]) == 10 and len(started[1]) == 8
    empty = tmp_path / "empty.sqlite"
    Store(empty).close()
    assert main(["runs", "list", "--store", str(empty)]) == 0
    assert capsys.readouterr().out.startswith(f"No runs in {empty} yet")


def test_help_is_plain_text_and_names_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert "``" not in text
    commands = build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    description = text.split("positional arguments")[0]
    assert all(name in description for name in commands), description


def test_a_bad_port_or_host_for_the_viewer_is_one_line(
    store_path: Path, busy_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["view", "--store", str(store_path), "--port", "99999"])
    assert exited.value.code == 2 and "99999 is not a port" in capsys.readouterr().err
    assert main(["view", "--store", str(store_path), "--port", str(busy_port)]) == 2
    assert "the port is in use; choose another with --port" in one_line_error(capsys, "view")


@pytest.mark.heavy  # a subprocess each
def test_output_piped_into_head_ends_quietly(store_path: Path) -> None:
    done = subprocess.run(
        f"{sys.executable} -m hybrid runs --store {store_path} show first | head -1",
        shell=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0 and done.stderr == "" and done.stdout.startswith("30/30 ok")


@pytest.mark.heavy
def test_a_busy_default_port_gives_way_to_the_next_free_one(store_path: Path, busy_port: int) -> None:
    script = (
        "import hybrid.cli as cli; cli.VIEW_PORT = int(__import__('sys').argv[1]); "
        "raise SystemExit(cli.main(['view', '--store', __import__('sys').argv[2]]))"
    )
    with subprocess.Popen(
        [sys.executable, "-c", script, str(busy_port), str(store_path)], stdout=subprocess.PIPE, text=True
    ) as child:
        try:
            assert child.stdout is not None
            first = child.stdout.readline()
        finally:
            child.kill()
    assert first.startswith("hybrid view: http://127.0.0.1:") and f":{busy_port}/" not in first
