// hybrid view: follow a running run's events (Server-Sent Events) and update its page in place.
// The page shows one page of rows and the run's counts as they stood when it was read (its
// data-after is the newest event then); the stream continues from that event, and the browser
// reconnects by itself after a dropped connection, sending Last-Event-ID, so no row is missed or
// counted twice.
(function () {
  const summary = document.getElementById("summary");
  if (!summary || summary.dataset.status !== "running") return;
  const name = summary.dataset.run;
  const queries = Number(summary.dataset.queries);
  const progress = document.getElementById("progress");
  const counts = {
    done: Number(summary.dataset.done), ok: Number(summary.dataset.ok), failed: Number(summary.dataset.failed),
  };
  const finished = new Set();  // rows counted already: finished before the page was read, or since
  document.querySelectorAll("#rows tr.done, #rows tr.failed").forEach((row) => finished.add(row.id));

  function show() {
    document.getElementById("done").textContent = counts.done;
    document.getElementById("ok").textContent = counts.ok;
    document.getElementById("failed").textContent = counts.failed;
    progress.value = counts.done;
  }

  function cells(row, values) {
    row.querySelectorAll("td").forEach((td, i) => { if (i < values.length) td.textContent = values[i]; });
  }

  function number(x) {
    return x === null || x === undefined ? "" : Number(x).toPrecision(4).replace(/\.?0+$/, "");
  }

  const source = new EventSource(
    "runs/" + encodeURIComponent(name) + "/events?after=" + encodeURIComponent(summary.dataset.after || "0"));
  source.addEventListener("query_started", (event) => {
    const data = JSON.parse(event.data);
    const row = document.getElementById("q" + data.index);
    if (row && row.classList.contains("pending")) {
      row.className = "running";
      cells(row, [data.index, "", "running"]);
    }
  });
  source.addEventListener("query_progress", (event) => {
    const data = JSON.parse(event.data);
    const row = document.getElementById("q" + data.index);
    if (row && !row.classList.contains("done") && !row.classList.contains("failed")) {
      row.className = "running";
      cells(row, [data.index, "", "running", "", "", data.tokens + " so far"]);
    }
  });
  source.addEventListener("query_completed", (event) => {
    const data = JSON.parse(event.data);
    const row = document.getElementById("q" + data.index);
    const state = data.ok ? "done" : "failed";
    if (row) {  // on this page
      row.className = state;
      cells(row, [data.index, data.name, state, data.error_kind || "", number(data.latency_s),
                  data.total_tokens ?? "", number(data.cost_usd), data.text || ""]);
    }
    if (!finished.has("q" + data.index)) {
      finished.add("q" + data.index);
      counts.done += 1;
      counts[data.ok ? "ok" : "failed"] += 1;
      show();
    }
  });
  source.addEventListener("final_result", (event) => {
    const data = JSON.parse(event.data);
    source.close();
    summary.dataset.status = data.status;
    summary.querySelector("b").textContent = data.status;
    progress.max = queries;
    // The finished run's page has its plots: load it.
    setTimeout(() => window.location.reload(), 300);
  });
})();
