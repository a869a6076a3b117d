"""The viewer's HTML: whole pages rendered on the server from the store (the script only adds the
live updates), so every page reads well without JavaScript too."""

from __future__ import annotations

import html
import io
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from hybrid import validity

if TYPE_CHECKING:
    from collections.abc import Mapping

    import pandas as pd
    from matplotlib.figure import Figure

    from hybrid.results import RunResult

_EMPTY = "<td></td>"
#: Rows of a run's table on one page (``?page=k``): what one view reads and renders.
PAGE_ROWS = 1000


#: The viewer's stylesheet, inlined in a page that must open from disk (``hybrid report --format html``).
STYLESHEET = Path(__file__).with_name("static") / "viewer.css"


def page(title: str, body: str, *, script: bool = False, standalone: bool = False) -> str:
    """A whole page.  ``standalone`` inlines the stylesheet and links nowhere, so the file reads the
    same opened from disk, with no server and no request leaving it."""
    scripts = '<script src="static/viewer.js" defer></script>' if script else ""
    style = (
        f"<style>{STYLESHEET.read_text()}</style>"
        if standalone
        else "<link rel='stylesheet' href='static/viewer.css'><link rel='icon' href='static/favicon.svg'>"
    )
    home = "<span>hybrid report</span>" if standalone else "<a href='./'>hybrid view</a>"
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{_escape(title)} · hybrid {'report' if standalone else 'view'}</title>"
        f"{style}{scripts}</head><body>"
        f"<header>{home}</header><main><h1>{_escape(title)}</h1>{body}</main></body></html>"
    )


def _escape(text: str) -> str:
    """``text`` for HTML, a NUL shown as ␀ (browsers drop it, or end the text there)."""
    return html.escape(text).replace("\x00", "\u2400")


def _run_url(name: str) -> str:
    """The path of run ``name``'s page from the viewer's root (any name: it is quoted whole, slashes
    and braces too).  Every link is relative to the root, which each page names in its ``<base>``
    (:func:`hybrid.view.server.make_app`), so the viewer works under a proxy's prefix too."""
    return f"runs/{quote(name, safe='')}"


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:,.0f}"
    return _escape(str(value))


def runs_page(runs: pd.DataFrame) -> str:
    if runs.empty:
        return page("Runs", "<p>No runs in this store yet. Runs appear here as soon as they start.</p>")
    rows = []
    for run in runs.to_dict("records"):
        name = str(run["name"])
        link = f"<a href='{_run_url(name)}'>{_escape(name)}</a>"
        when = run["started_at"].strftime("%Y-%m-%d %H:%M:%S UTC")
        keys = ("mode", "status", "segments", "queries", "ok", "failed", "wall_s", "total_tokens", "cost_usd")
        values = [run["mode"], run["status"], when, *(run[k] for k in keys[2:])]
        rows.append(f"<tr><td>{link}</td>" + "".join(f"<td>{_cell(v)}</td>" for v in values) + "</tr>")
    head = "".join(
        f"<th>{h}</th>"
        for h in (
            "name",
            "mode",
            "status",
            "started",
            "segments",
            "queries",
            "ok",
            "failed",
            "wall (s)",
            "tokens",
            "cost ($)",
        )
    )
    form = compare_form(list(runs["name"]))
    pareto = "<p><a href='pareto'>Throughput against p95 latency, run by run: the Pareto frontier</a></p>"
    table = f"<table id='runs'><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
    return page("Runs", f"{table}{form}{pareto}")


def pareto_page(runs: Mapping[str, RunResult], *, shown: int, of: int) -> str:
    """:func:`hybrid.plots.pareto` over runs (each its own configuration), and a table of what it
    drew: throughput, p95 latency, whether the run is on the frontier, its flags."""
    import pandas as pd

    from hybrid import plots

    if len(runs) < 2:
        needs = "<p>The Pareto view needs two finished runs or more that answered something.</p>"
        return page("Runs on the Pareto frontier", needs)
    frame = pd.DataFrame(
        [
            {"run": name, "throughput_qps": r.metrics.throughput_qps, "p95_latency_s": r.metrics.p95_latency_s}
            for name, r in runs.items()
        ]
    )
    front = set(plots.frontier(list(frame["throughput_qps"]), list(frame["p95_latency_s"])))
    rows = "".join(
        f"<tr><td><a href='{_run_url(name)}'>{_escape(name)}</a></td><td>{_cell(row['throughput_qps'])}</td>"
        f"<td>{_cell(row['p95_latency_s'])}</td><td>{'yes' if i in front else ''}</td>"
        f"<td>{_escape(', '.join(runs[name].flags))}</td></tr>"
        for i, (name, row) in enumerate(zip(frame["run"], frame.to_dict("records"), strict=True))
    )
    titles = ("run", "throughput (queries/s)", "p95 latency (s)", "on the frontier", "flags")
    head = "<tr>" + "".join(f"<th>{t}</th>" for t in titles) + "</tr>"
    note = f"<p>The latest {shown} of {of} finished runs.</p>" if shown < of else ""
    figure = _svg(plots.pareto(frame, by="run", title="Throughput against p95 latency, run by run"))
    table = f"<table id='pareto'><thead>{head}</thead><tbody>{rows}</tbody></table>"
    return page("Runs on the Pareto frontier", f"{note}<div class='figures'>{figure}</div>{table}")


def run_body(
    name: str,
    info: dict[str, Any],
    rows: dict[int, dict[str, Any]],
    run: RunResult | None,
    *,
    page_number: int = 0,
    after: int = 0,
    links: bool = True,
) -> str:
    """One run (a page's body; the viewer's run page is live while the run goes on): counts, a
    progress bar, one page of the table (:data:`PAGE_ROWS` rows; rows not
    answered yet are pending, a text cut short links to the whole answer), and, once the run has
    ended, the timeline, efficiency and tokens per query.  ``after`` is the newest event when the
    page was read: the live script follows from there.  Without ``links`` (a page opened from
    disk) there are no links to other pages."""
    queries = int(info["queries"])
    ok, failed = int(info["ok"] or 0), int(info["failed"] or 0)
    done = ok + failed
    first = page_number * PAGE_ROWS
    table = []
    for index in range(first, min(queries, first + PAGE_ROWS)):
        row = rows.get(index)
        if row is None:
            table.append(
                f"<tr id='q{index}' class='pending'><td>{index}</td><td></td><td>pending</td>{_EMPTY * 5}</tr>"
            )
            continue
        state = "done" if row["ok"] else "failed"
        table.append(
            f"<tr id='q{index}' class='{state}'><td>{index}</td><td>{_cell(row['name'])}</td><td>{state}</td>"
            f"<td>{_cell(row['error_kind'])}</td><td>{_cell(row['latency_s'])}</td><td>{_cell(row['total_tokens'])}</td>"
            f"<td>{_cell(row['cost_usd'])}</td><td class='text'>{_cell(row['text'])}"
            f"{_whole(name, row) if links else ''}</td></tr>"
        )
    status = str(info["status"])
    summary = (
        f"<p id='summary' data-run='{_escape(name)}' data-status='{_escape(status)}' data-queries='{queries}' "
        f"data-done='{done}' data-ok='{ok}' data-failed='{failed}' data-after='{after}'>"
        f"<b>{status}</b> · mode {_escape(str(info['mode']))} · <span id='done'>{done}</span> of {queries} "
        f"finished · <span id='ok'>{ok}</span> ok · <span id='failed'>{failed}</span> failed</p>"
        f"<progress id='progress' max='{queries}' value='{done}'></progress>"
    )
    figures = "" if run is None else _figures(run)
    head = "".join(
        f"<th>{h}</th>" for h in ("#", "name", "state", "error", "latency (s)", "tokens", "cost ($)", "text")
    )
    table_html = f"<table id='rows'><thead><tr>{head}</tr></thead><tbody>{''.join(table)}</tbody></table>"
    pager = _pager(name, queries, page_number) if links else ""
    return f"{summary}{figures}{pager}{table_html}"


def _whole(name: str, row: dict[str, Any]) -> str:
    """A link to a row's whole answer, when the table shows it cut."""
    if not row.get("truncated"):
        return ""
    return f" <a href='{_run_url(name)}/rows/{row['index']}'>(whole answer)</a>"


def _pager(name: str, queries: int, page_number: int) -> str:
    """Which rows the table shows, and links to the pages before and after (a big run's table is
    shown :data:`PAGE_ROWS` rows at a time)."""
    if queries <= PAGE_ROWS:
        return ""
    first, last = page_number * PAGE_ROWS, min(queries, (page_number + 1) * PAGE_ROWS) - 1
    links = [f"rows {first}-{last} of {queries}"]
    if page_number > 0:
        links.append(f"<a href='{_run_url(name)}?page={page_number - 1}'>previous</a>")
    if last < queries - 1:
        links.append(f"<a href='{_run_url(name)}?page={page_number + 1}'>next</a>")
    return f"<nav class='pager'>{' · '.join(links)}</nav>"


def answer_page(name: str, index: int, text: str) -> str:
    """One row's whole answer."""
    back = f"<p><a href='{_run_url(name)}'>Run {_escape(name)}</a></p>"
    return page(f"Run {name}, row {index}", f"{back}<pre class='answer'>{_escape(text)}</pre>")


def _figures(run: RunResult) -> str:
    from hybrid import plots

    m = run.metrics
    # The line the notebook printed for this run, from the same code (RunResult.summary).
    numbers = f"<p class='metrics'><b>{_escape(run.summary())}</b> · p95 latency {_duration(m.p95_latency_s)}</p>"
    numbers += _flags(run) + _prices(run) + _where_the_time_went(run) + _diagnostics(run)
    # Each plot draws a big run in groups of consecutive queries (plots.MAX_BARS): bounded at any size.
    figures = (plots.timeline(run), plots.decomposition(run), plots.tokens(run))
    return numbers + "<div class='figures'>" + "".join(_svg(f) for f in figures) + "</div>"


def _flags(run: RunResult) -> str:
    """The run's validity flags (:mod:`hybrid.validity`), each with what it means for its numbers."""
    if not run.flags:
        return ""
    items = "".join(f"<li>{_escape(line)}</li>" for line in validity.described(run.flags))
    return f"<div id='flags' class='flags'><b>Read these numbers with care</b><ul>{items}</ul></div>"


def _prices(run: RunResult) -> str:
    """Where the price of each model the run priced came from (yours, or genai-prices' table)."""
    if not run.prices:
        return ""
    items = "".join(f"<li>{_escape(model)}: {_escape(source)}</li>" for model, source in run.prices.items())
    return f"<div id='prices' class='prices'>Prices<ul>{items}</ul></div>"


def _diagnostics(run: RunResult) -> str:
    """What was measured in real time while the run ran (a blocked event loop): shown here, never
    in the run's warnings or summary line."""
    if not run.diagnostics:
        return ""
    items = "".join(f"<li>{_escape(note)}</li>" for note in run.diagnostics)
    return f"<details id='diagnostics' open><summary>Diagnostics (real time)</summary><ul>{items}</ul></details>"


def _where_the_time_went(run: RunResult) -> str:
    """The mean query's latency split (the decomposition's parts), each as :func:`_duration` writes it."""
    m = run.metrics
    parts = [
        ("client queue", m.mean_queue_s),
        ("retries", m.mean_retry_s),
        ("client", m.mean_client_s),
        ("server queue", m.mean_server_queue_s),
        ("server", m.mean_server_s),
        ("network and the rest", m.mean_network_s),
    ]
    shown = " · ".join(f"{label} {_duration(value)}" for label, value in parts)
    return f"<p class='decomposition'>mean query: {shown}</p>"


def _duration(seconds: float | None) -> str:
    """Milliseconds below a second, seconds above: ``272 ms``, ``1.36 s``; float dust (a part that is a
    difference of sums, under a microsecond) is ``0 ms``."""
    if seconds is None or math.isnan(seconds):
        return "not reported"
    if abs(seconds) < 1e-6:
        return "0 ms"
    return f"{seconds:.3g} s" if seconds >= 1 else f"{seconds * 1000:.3g} ms"


def _svg(figure: Figure) -> str:
    buffer = io.StringIO()
    figure.savefig(buffer, format="svg")
    text = buffer.getvalue()
    return "<figure>" + text[text.index("<svg") :] + "</figure>"


def compare_form(names: list[str], a: str | None = None, b: str | None = None) -> str:
    """Two lists of the store's runs to compare (the newest preselected as B, the one before as A)."""

    def choices(field: str, chosen: str | None) -> str:
        options = "".join(f"<option{' selected' if name == chosen else ''}>{_escape(name)}</option>" for name in names)
        return f"<select name='{field}' required>{options}</select>"

    a = a if a is not None else (names[-2] if len(names) > 1 else None)
    b = b if b is not None else (names[-1] if names else None)
    return (
        f"<form action='compare' class='compare'>Compare {choices('a', a)} (baseline) with {choices('b', b)} "
        "<button>compare</button></form>"
    )


def compare_page(
    a: str,
    b: str,
    frame: pd.DataFrame,
    verdicts: pd.DataFrame | None,
    names: list[str],
    runs: Mapping[str, RunResult],
) -> str:
    """Run ``b`` against the baseline ``a``: :func:`~hybrid.bench.compare_runs`' verdicts first (ratio
    B/A with its interval per metric), both runs' timelines on one time axis, then the queries whose
    answer or outcome changed, then the rest.  ``verdicts`` is None when the runs have too few
    answered queries to compare."""
    from hybrid import plots

    if verdicts is None:
        summary = "<p>Too few answered queries in these runs for a verdict with an interval.</p>"
    else:
        rows = "".join(
            f"<tr class='{_escape(str(r['verdict']))}'><td>{_escape(str(r['metric']))}</td><td>{_cell(r['a'])}</td>"
            f"<td>{_cell(r['b'])}</td><td>{_cell(r['ratio'])}</td><td>{_cell(r['ci_low'])}-{_cell(r['ci_high'])}</td>"
            f"<td>{_escape(str(r['verdict']))}</td></tr>"
            for r in verdicts.to_dict("records")
        )
        head = "".join(f"<th>{h}</th>" for h in ("metric", "A", "B", "B / A", "95% interval", "verdict"))
        summary = f"<table id='verdicts'><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"
    import pandas as pd

    frame = frame.copy()
    for column in (f"text_{a}", f"text_{b}"):  # the start of each answer: the run pages have them whole
        frame[column] = frame[column].str[:80]
    changed = frame["text_changed"] | (frame[f"ok_{a}"] != frame[f"ok_{b}"])
    ordered = pd.concat([frame[changed].sort_values("tokens_delta", key=abs, ascending=False), frame[~changed]])
    shown = "" if len(ordered) <= PAGE_ROWS else f" (the first {PAGE_ROWS} of {len(ordered)})"
    table = ordered.head(PAGE_ROWS).to_html(index=True, float_format=lambda x: f"{x:.4g}", na_rep="", border=0)
    body = (
        f"{compare_form(names, a, b)}<h2>Verdicts (B against the baseline A)</h2>{summary}"
        f"<h2>Both timelines, on one time axis</h2><div class='figures'>{_svg(plots.timeline(runs))}</div>"
        f"<h2>Per query: {int(changed.sum())} changed first, then the rest{shown}</h2>"
        + table.replace("<table", "<table id='compare'", 1)
    )
    return page(f"{a} vs {b}", body)


def refused(why: str) -> str:
    """A page that says why the viewer will not answer (wrong host, no token, no store, a bad request)."""
    return page("Not available", f"<p>{_escape(why)}</p>")


def not_found(what: str) -> str:
    return page("Not found", f"<p>{_escape(what)}</p><p><a href='./'>All runs</a></p>")
