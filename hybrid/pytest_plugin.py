"""The kit's pytest plugin (registered through the ``pytest11`` entry point, so it is active in any
project that installs the kit, not only in this repository).  It does two jobs for teams that test
LLM code: it runs tests that call a model against a recording, judged by a sequential gate, and it
guards nbval's checked cells.

**LLM tests.**  Ini options (``pytest.ini``, ``[tool.pytest.ini_options]``):

- ``hybrid_backend``: ``"package.module:factory"``, a callable returning the backend (default
  ``hybrid.sim:backend``, the simulator in this process);
- ``hybrid_store``: the store holding the recording (default ``hybrid-recording.sqlite`` beside the
  ini file), an ordinary file to commit;
- ``hybrid_cache``: ``record`` (default: answer from the recording, send and keep what is missing),
  ``replay`` (answer only from it, send nothing) or ``live``;
- ``hybrid_inconclusive``: what a test the gate cannot decide does, ``skip`` (default) or ``fail``.

``--hybrid-cache=replay|record|live`` means what ``HYBRID_CACHE`` means (it sets it for the
session): every orchestrator with a store, the fixture's and the test's own, uses that mode.  CI
runs ``pytest --hybrid-cache=replay``: offline, free, no key.

The fixture ``hybrid_orch`` is an orchestrator on that backend and store, not yet opened (an
orchestrator belongs to the event loop that opens it): ``async with hybrid_orch as orch:``.  A test
marked ``@pytest.mark.llm(min_pass=0.8, max_repeats=16)`` runs once per sample, its
``hybrid_sample`` fixture telling it which (pass it as ``Query(..., sample=hybrid_sample)`` so
each repeat is its own request and its own recording); a sample passes when the test body does
not fail.  A :class:`~hybrid.lab.SequentialTest` judges the samples as they come and stops as soon
as it knows; the test fails with the pass rate, its interval, the threshold and two failing
samples' messages.

**The nbval guard.**  A cell marked ``# NBVAL_CHECK_OUTPUT`` (or tagged ``nbval-check-output``)
promises that its output is compared with the copy saved in the notebook.  When the saved copy is
unrun (``execution_count`` null) nbval skips the comparison, and when it has no outputs there is
nothing to compare: either way the cell passes whatever it prints.  That happens to real notebooks
(a front end's autosave of a half-loaded page wrote one back stripped), and a check that cannot fail
is worse than none.  So such a cell fails here, after it has run (the cells after it still see its
effects), naming the notebook and cell and saying how to restore the saved outputs.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from hybrid.orchestrator import Orchestrator
    from hybrid.store import Store

CACHE_CHOICES = ("replay", "record", "live")
INCONCLUSIVE_CHOICES = ("skip", "fail")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("hybrid", "LLM tests on recordings (hybrid-llm-kit)")
    group.addoption(
        "--hybrid-cache",
        choices=CACHE_CHOICES,
        help="replay (answers only from the recording, nothing sent), record or live: sets HYBRID_CACHE",
    )
    parser.addini("hybrid_backend", "package.module:factory returning the backend", default="hybrid.sim:backend")
    parser.addini("hybrid_store", "the store file holding the recording", default="hybrid-recording.sqlite")
    parser.addini("hybrid_cache", "record, replay or live (--hybrid-cache and HYBRID_CACHE win)", default="record")
    parser.addini("hybrid_inconclusive", "what an undecided llm test does: skip or fail", default="skip")


def pytest_configure(config: pytest.Config) -> None:
    _without_looptime_if_no_asyncio(config.pluginmanager)
    config.addinivalue_line(
        "markers",
        "llm(min_pass=0.8, max_repeats=16, confidence=0.95): run the test once per sample (the hybrid_sample "
        "fixture) until a sequential gate decides whether its pass rate reaches min_pass",
    )
    for name, choices in (("hybrid_cache", CACHE_CHOICES), ("hybrid_inconclusive", INCONCLUSIVE_CHOICES)):
        if config.getini(name) not in choices:
            raise pytest.UsageError(f"ini option {name} = {config.getini(name)!r}: use one of {', '.join(choices)}.")
    forced = config.getoption("hybrid_cache", None)
    if forced:
        config.stash[_SAVED_ENV] = os.environ.get("HYBRID_CACHE")
        os.environ["HYBRID_CACHE"] = forced


_SAVED_ENV = pytest.StashKey[str | None]()


def _without_looptime_if_no_asyncio(plugins: pytest.PytestPluginManager) -> None:
    """looptime, the kit's virtual clock, registers a pytest plugin whose fixture hook assumes
    pytest-asyncio: without it, every test that uses a fixture errors (``'NoneType' object has no
    attribute '__name__'``).  A project that installs the kit but not pytest-asyncio has no use for
    looptime's plugin (it times pytest-asyncio's loops), so there it is unregistered."""
    if plugins.getplugin("asyncio") is not None:
        return
    for name in ("looptime_plugin", "looptime_chronometers", "looptime_timeproxies"):
        plugin = plugins.getplugin(name)
        if plugin is not None:
            plugins.unregister(plugin)


def pytest_unconfigure(config: pytest.Config) -> None:
    if _SAVED_ENV in config.stash:
        saved = config.stash[_SAVED_ENV]
        if saved is None:
            os.environ.pop("HYBRID_CACHE", None)
        else:
            os.environ["HYBRID_CACHE"] = saved


def _factory(spec: str) -> Callable[[], Any]:
    """The callable named by ``package.module:factory`` (a clear usage error if it is not one)."""
    module_name, _, attribute = spec.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attribute or "backend")
    except (ImportError, AttributeError) as exc:
        raise pytest.UsageError(
            f"ini option hybrid_backend = {spec!r} does not name a callable ({exc}); write it as "
            "'package.module:factory', e.g. 'hybrid.sim:backend' or 'myproject.llm:make_backend'."
        ) from None
    if not callable(factory):
        raise pytest.UsageError(f"ini option hybrid_backend = {spec!r} names {factory!r}, which is not callable.")
    return factory  # type: ignore[no-any-return]


@pytest.fixture(scope="session")
def hybrid_store(pytestconfig: pytest.Config) -> Iterator[Store]:
    """The store holding the recording (the ini option ``hybrid_store``), open for the session."""
    from hybrid.store import Store

    path = Path(pytestconfig.getini("hybrid_store"))
    if not path.is_absolute():
        path = Path(pytestconfig.rootpath) / path
    with Store(path) as store:
        yield store


@pytest.fixture
def hybrid_orch(pytestconfig: pytest.Config, hybrid_store: Store) -> Orchestrator:
    """An orchestrator on the configured backend and recording, not yet opened (see the module
    docstring); its cache mode is ``hybrid_cache``, unless ``--hybrid-cache``/``HYBRID_CACHE`` say."""
    from hybrid.orchestrator import Orchestrator

    backend = _factory(pytestconfig.getini("hybrid_backend"))()
    return Orchestrator(backend, store=hybrid_store, cache=pytestconfig.getini("hybrid_cache"), progress=False)


@pytest.fixture
def hybrid_sample() -> int:
    """Which sample of an ``llm``-marked test this is (0, 1, ...); 0 for an unmarked test."""
    return 0


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        marker = item.get_closest_marker("llm")
        if marker is not None and isinstance(item, pytest.Function):
            settings = {"min_pass": 0.8, "max_repeats": 16, "confidence": 0.95, **marker.kwargs}
            item.runtest = _sampled(item, item.runtest, **settings)  # type: ignore[method-assign]


def _sampled(
    item: pytest.Function, runtest: Callable[[], None], *, min_pass: float, max_repeats: int, confidence: float
) -> Callable[[], None]:
    """``item``'s run: its body once per sample until the sequential test decides."""
    from hybrid.errors import HybridError
    from hybrid.lab import SequentialTest

    def run() -> None:
        try:
            test = SequentialTest(min_pass, confidence, max_samples=max_repeats)
        except HybridError as exc:
            raise pytest.UsageError(f"{item.nodeid}: @pytest.mark.llm(...): {exc}") from None
        failures: list[str] = []
        for sample in range(max_repeats):
            if "hybrid_sample" in item.funcargs:
                item.funcargs["hybrid_sample"] = sample
            try:
                runtest()
            except (pytest.skip.Exception, pytest.xfail.Exception, KeyboardInterrupt):
                raise
            except BaseException as exc:  # the test body failed this sample (an assert, an error)
                if len(failures) < 2:  # the message shows two
                    failures.append(f"sample {sample}: {type(exc).__name__}: {_first_lines(exc)}")
                test.add(False)
            else:
                test.add(True)
            if test.verdict is not None:
                break
        gate = test.gate()
        if gate.verdict == "pass":
            return
        shown = "\n".join(f"  {failure}" for failure in failures)
        message = f"{item.name}: {gate.why}.\nFailing samples:\n{shown}" if failures else f"{item.name}: {gate.why}."
        if gate.verdict == "inconclusive" and item.config.getini("hybrid_inconclusive") == "skip":
            pytest.skip(message)
        pytest.fail(message, pytrace=False)

    return run


def _first_lines(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split()) or "(no message)"
    return text if len(text) <= limit else text[: limit - 3] + "..."


# -- the nbval guard -------------------------------------------------------------------------------
def _checked_but_empty(item: pytest.Item) -> str | None:
    """Why ``item`` (an nbval cell) is a checked cell with nothing saved to check, or None."""
    try:
        from nbval.plugin import IPyNbCell, find_comment_markers, find_metadata_tags
    except ImportError:  # nbval is not installed: there is nothing to guard
        return None
    if not isinstance(item, IPyNbCell) or not item.options.get("check"):
        return None
    cell = item.cell
    markers = {**dict(find_metadata_tags(cell.metadata)), **dict(find_comment_markers(cell.source))}
    if markers.get("check") is not True:  # checked by --nbval's default, not by a marker
        return None
    if cell.execution_count is None:
        return "its saved copy was never run (execution_count is null), so nbval skips the comparison"
    if not cell.outputs:
        return "its saved copy has no outputs, so there is nothing to compare against"
    return None


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, Any, Any]:
    why = _checked_but_empty(item)
    if why is None:
        return (yield)
    try:
        yield  # the cell runs first: later cells depend on what it defines
    except Exception:  # nbval's own complaint (outputs differ from nothing) says less than this
        pass
    notebook = item.path
    pytest.fail(
        f"{notebook}, cell {getattr(item, 'cell_num', '?')} is marked NBVAL_CHECK_OUTPUT but {why}: its check "
        f"cannot tell right from wrong. Restore the saved outputs (git checkout -- {notebook}), or run the notebook "
        "top to bottom in JupyterLab and save it, then commit the outputs.",
        pytrace=False,
    )
