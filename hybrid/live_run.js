// The live run widget's front end (hybrid/live_run.py): one snapshot of the run at a time, drawn
// as text and a small SVG timeline; the cancel button shows only once the kernel has proven it can
// hear it during a run ("cancellable").
const STYLE = `
.hybrid-run { font: 13px/1.4 system-ui, sans-serif; border: 1px solid #d0d7de; border-radius: 6px;
  padding: 8px 10px; max-width: 720px; }
.hybrid-run .head { display: flex; align-items: center; gap: 10px; }
.hybrid-run .title { font-weight: 600; }
.hybrid-run .state { color: #57606a; }
.hybrid-run button { margin-left: auto; border: 1px solid #cf222e; color: #cf222e; background: #fff;
  border-radius: 4px; padding: 2px 10px; cursor: pointer; }
.hybrid-run button[hidden] { display: none; }
.hybrid-run progress { width: 100%; height: 8px; margin: 6px 0; }
.hybrid-run .facts { display: flex; flex-wrap: wrap; gap: 4px 14px; color: #24292f; }
.hybrid-run .facts b { font-weight: 600; }
.hybrid-run .failed { color: #cf222e; }
.hybrid-run svg { display: block; margin-top: 6px; }
`;

function money(x) { return x == null ? "n/a" : "$" + x.toFixed(x < 0.01 ? 6 : 4); }

function lanes(svg, s) {
  const all = s.lanes || [];
  let shown = all.length;  // the timeline grows: lanes up to the last one that has started
  while (shown > 0 && all[shown - 1][0] == null) shown--;
  const rows = all.slice(0, shown);
  const height = rows.length * 6 + 2;
  const span = Math.max(s.elapsed_s || 0, ...rows.map(l => l[1] || 0), 1e-9);
  const width = 700;
  svg.setAttribute("width", width);
  svg.setAttribute("height", height);
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  const parts = rows.map((lane, i) => {
    const [start, end, done, count, failed] = lane;
    if (start == null) return "";
    const stop = done < count ? (s.elapsed_s || end || start) : (end == null ? start : end);
    const x = (start / span) * width;
    const w = Math.max(1, ((stop - start) / span) * width);
    const colour = failed ? "#cf222e" : done < count ? "#8172b3" : "#4c72b0";
    const opacity = count ? 0.35 + 0.65 * (done / count) : 1;
    return `<rect x="${x.toFixed(1)}" y="${i * 6 + 1}" width="${w.toFixed(1)}" height="5" fill="${colour}" fill-opacity="${opacity.toFixed(2)}"></rect>`;
  });
  svg.innerHTML = parts.join("");
}

function render({ model, el }) {
  const style = document.createElement("style");
  style.textContent = STYLE;
  const root = document.createElement("div");
  root.className = "hybrid-run";
  root.innerHTML = `<div class="head"><span class="title"></span><span class="state"></span>
    <button type="button" hidden>cancel run</button></div>
    <progress value="0" max="1"></progress><div class="facts"></div>
    <svg xmlns="http://www.w3.org/2000/svg" role="img" aria-label="timeline"></svg>`;
  el.append(style, root);
  const button = root.querySelector("button");
  const update = () => {
    const s = model.get("snapshot") || {};
    root.querySelector(".title").textContent = model.get("title");
    root.querySelector(".state").textContent = s.state || "starting";
    root.dataset.done = s.done ?? 0;
    root.dataset.state = s.state || "starting";
    const bar = root.querySelector("progress");
    bar.max = Math.max(1, s.total || 1);
    bar.value = s.done || 0;
    const failed = Object.entries(s.failed || {}).map(([k, n]) => `${k} ${n}`).join(", ");
    const facts = [
      `<span class="done"><b>${s.done ?? 0}</b> of ${s.total ?? 0} done</span>`,
      `<span><b>${s.ok ?? 0}</b> ok</span>`,
      failed ? `<span class="failed">failed: ${failed}</span>` : "",
      `<span><b>${s.in_flight ?? 0}</b> in flight${s.limit != null ? ` (limit ${s.limit})` : ""}</span>`,
      `<span><b>${s.per_s ?? "–"}</b>/s</span>`,
      `<span><b>${s.tokens ?? 0}</b> tokens</span>`,
      `<span>cost ${money(s.cost_usd)}</span>`,
      s.budget_left_usd != null ? `<span>budget left ${money(s.budget_left_usd)}</span>` : "",
      `<span>${(s.elapsed_s ?? 0).toFixed(1)} s</span>`,
    ];
    root.querySelector(".facts").innerHTML = facts.join("");
    lanes(root.querySelector("svg"), s);
    button.hidden = !(model.get("cancellable") && s.state === "running");
  };
  button.addEventListener("click", () => {
    button.disabled = true;
    button.textContent = "cancelling…";
    model.send({ type: "cancel" });
  });
  model.on("change:snapshot", update);
  model.on("change:cancellable", update);
  update();
  model.send({ type: "ready" });
}

export default { render };
