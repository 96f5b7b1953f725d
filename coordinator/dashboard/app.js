// The big screen (plain JS, no build step). Polls /dashboard/data/overview every interval_s and
// updates a tile per site in place; #site=NAME opens a site's detail view (charts over a chosen
// range, jobs, a log tail). Every figure carries data-metric="<site>:<name>" and data-value=<raw>
// so tests can compare the page with the API. Charts are uPlot, served by the coordinator itself.
// Sites show their display names (any script); quality.js draws the production-quality figures.
"use strict";

(() => {
  const DATA = "/dashboard/data";
  const HEALTH_RANK = { down: 0, warn: 1, ok: 2 };
  const PALETTE = ["#4ea8ff", "#f5a623", "#b38cff", "#2ecc71", "#ff6b9a", "#3dd6d0", "#e0e060", "#ff8c42"];
  const ROTATE_MS = 20000;  // a wall screen with more sites than fit shows the next page this often
  const DENSE_FROM = 12;  // more sites than this: smaller tiles
  const MAX_ALERTS = 6;  // the strip stays one or two lines; the rest are counted
  const CHARTS = [  // detail view: one chart per group, the series present in the site's history
    { id: "util", title: "CPU and GPU utilisation (%)", names: ["cpu_util", "gpu_util"], unit: "pct" },
    { id: "mem", title: "Memory used", names: ["mem_used", "gpu_mem_used"], unit: "bytes" },
    { id: "disk", title: "Disk used", names: ["disk_used"], unit: "bytes" },
    { id: "net", title: "Network (receive / send)", names: ["net_rx_bps", "net_tx_bps"], unit: "rate" },
    { id: "store", title: "Object store used", names: ["object_store_used"], unit: "bytes" },
    { id: "infer", title: "Inference requests /s", names: ["inference_rps"], unit: "num" },
    { id: "latency", title: "Inference latency (ms)", names: ["latency_p50_ms", "latency_p99_ms"], unit: "num" },
  ];

  const st = {
    overview: null, intervalMs: 5000, lastOk: 0, page: 0, pageSize: 12, rotateAt: Date.now() + ROTATE_MS,
    tiles: new Map(), detail: null, windowS: 3600, chartRange: [0, 1], detailCharts: [], detailGen: 0, detailTimer: null,
    loggedOut: false, timer: null,
  };
  const $ = (id) => document.getElementById(id);

  // ---------- formatting ----------
  const isNum = (v) => typeof v === "number" && Number.isFinite(v);
  function fmtBytes(n) {
    if (!isNum(n)) return "–";
    const units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let i = 0;
    while (Math.abs(n) >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
    return `${n >= 100 || i === 0 ? n.toFixed(0) : n.toFixed(1)} ${units[i]}`;
  }
  const fmtRate = (bps) => (isNum(bps) ? `${fmtBytes(bps)}/s` : "–");
  const fmtPct = (v) => (isNum(v) ? `${v.toFixed(v >= 10 ? 0 : 1)} %` : "–");
  const fmtShare = (v) => (isNum(v) ? `${(v * 100).toFixed(1)} %` : "–");
  function fmtNum(v) {
    if (!isNum(v)) return "–";
    if (Math.abs(v) >= 1e6) return `${(v / 1e6).toFixed(1)} M`;
    if (Math.abs(v) >= 1e4) return `${(v / 1e3).toFixed(1)} k`;
    return Number.isInteger(v) ? String(v) : v.toFixed(1);
  }
  const FORMAT = { pct: fmtPct, bytes: fmtBytes, rate: fmtRate, num: fmtNum };
  const Y_FLOOR = { pct: 100, bytes: 1024 ** 2, rate: 1024, num: 1 };  // an idle series still gets a readable axis

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else node.setAttribute(k, v);
    }
    for (const c of children) node.append(c);
    return node;
  }
  function metric(site, name) {  // a figure element tests can read
    return el("span", { "data-metric": `${site}:${name}`, class: "fig" });
  }
  function setFig(node, raw, text) {
    node.dataset.value = raw === null || raw === undefined ? "" : String(raw);
    node.textContent = text;
  }

  // ---------- data ----------
  async function getJSON(path) {
    const r = await fetch(path, { credentials: "same-origin", cache: "no-store" });
    if (r.status === 401) { loggedOut(); throw new Error("logged out"); }
    let body = null;
    try { body = await r.json(); } catch (e) { body = null; }
    if (!r.ok) throw new Error((body && body.detail) || `HTTP ${r.status}`);
    return body;
  }
  function loggedOut() {
    if (st.loggedOut) return;
    st.loggedOut = true;
    clearTimeout(st.timer);
    const f = $("freshness");
    f.textContent = "session ended: run `adcp dashboard --url` and open the new link";
    f.classList.add("stale");
  }

  async function poll() {
    try {
      const ov = await getJSON(`${DATA}/overview`);
      st.overview = ov;
      st.intervalMs = Math.max(1000, (isNum(ov.interval_s) ? ov.interval_s : 5) * 1000);
      st.lastOk = Date.now();
      render();
    } catch (e) {
      if (!st.loggedOut) showFreshness(`no answer from the coordinator: ${e.message}`);
    }
    if (!st.loggedOut) st.timer = setTimeout(poll, st.intervalMs);
  }

  function showFreshness(problem) {
    const f = $("freshness");
    const ov = st.overview;
    const at = ov && ov.generated_at ? new Date(ov.generated_at).toLocaleTimeString() : "never";
    const stale = problem || Date.now() - st.lastOk > 3 * st.intervalMs;
    f.textContent = problem ? `${problem} (last update ${at})` : `updated ${at}`;
    f.classList.toggle("stale", Boolean(stale));
  }

  // ---------- overview: totals, alerts, grid ----------
  function render() {
    const ov = st.overview;
    renderTotals(ov.totals || {});
    renderAlerts((ov.alerts || []).filter((a) => a.active !== false));
    if (st.detail) renderDetailFacts();
    else renderGrid(sortedSites(ov.sites || []));
    showFreshness();
  }

  function renderTotals(t) {
    for (const node of $("totals").querySelectorAll("[data-metric]")) {
      const key = node.dataset.metric.slice("total:".length);
      setFig(node, t[key], key === "inference_rps" ? fmtNum(t[key]) : (isNum(t[key]) ? fmtNum(t[key]) : "–"));
    }
  }

  function renderAlerts(alerts) {
    const box = $("alerts");
    const sorted = [...alerts].sort((a, b) => (a.severity === "critical" ? 0 : 1) - (b.severity === "critical" ? 0 : 1));
    box.replaceChildren(...sorted.slice(0, MAX_ALERTS).map((a) => el("div", { class: `alert ${a.severity || ""}`, "data-alert": a.id || "" },
      el("span", { class: "site", text: a.site || "" }), el("span", { text: a.message || a.rule || "" }),
      el("span", { class: "muted", text: a.since ? `  since ${new Date(a.since).toLocaleTimeString()}` : "" }))));
    if (sorted.length > MAX_ALERTS) box.append(el("div", { class: "alert more", text: `+${sorted.length - MAX_ALERTS} more` }));
    box.hidden = alerts.length === 0;
  }

  function sortedSites(sites) {
    const rank = (s) => (s.health in HEALTH_RANK ? HEALTH_RANK[s.health] : 1);
    return [...sites].sort((a, b) => rank(a) - rank(b) || a.name.localeCompare(b.name));
  }

  function computePageSize() {
    const grid = $("grid");
    const em = parseFloat(getComputedStyle(grid).fontSize) || 16;
    const cols = Math.max(1, Math.floor((grid.clientWidth + 0.8 * em) / (19.8 * em)));
    const first = grid.querySelector(".tile");
    const tileH = (first ? first.offsetHeight : 17 * em) + 0.8 * em;
    const room = window.innerHeight - grid.getBoundingClientRect().top - 4 * em;
    return cols * Math.max(1, Math.floor(room / tileH));
  }

  function renderGrid(sites) {
    $("grid").classList.toggle("dense", sites.length > DENSE_FROM);
    st.pageSize = computePageSize();
    const pages = Math.max(1, Math.ceil(sites.length / st.pageSize));
    if ($("page-rotate").checked && pages > 1 && Date.now() >= st.rotateAt) {
      st.page += 1;
      st.rotateAt = Date.now() + ROTATE_MS;
    }
    st.page = ((st.page % pages) + pages) % pages;
    const shown = sites.slice(st.page * st.pageSize, (st.page + 1) * st.pageSize);
    const keep = new Set(shown.map((s) => s.name));
    for (const [name, tile] of st.tiles) {
      if (!keep.has(name)) { tile.destroy(); st.tiles.delete(name); }
    }
    const grid = $("grid");
    shown.forEach((s, i) => {
      let tile = st.tiles.get(s.name);
      if (!tile) { tile = makeTile(s.name); st.tiles.set(s.name, tile); }
      if (grid.children[i] !== tile.root) grid.insertBefore(tile.root, grid.children[i] || null);
      tile.update(s);
    });
    $("pager").hidden = pages <= 1;
    $("page-label").textContent = `page ${st.page + 1} / ${pages} · ${sites.length} sites`;
  }

  // ---------- a site tile ----------
  const SPARKS = [
    { key: "cpu", label: "CPU", names: ["cpu_util"], range: () => [0, 100] },
    { key: "mem", label: "Mem", names: ["mem_used"], range: (s) => [0, s.latest.mem_total || null] },
    { key: "disk", label: "Disk", names: ["disk_used"], range: (s) => [0, s.latest.disk_total || null] },
    { key: "net", label: "Net", names: ["net_rx_bps", "net_tx_bps"], range: () => [0, null] },
    { key: "gpu", label: "GPU", names: ["gpu_util"], range: () => [0, 100] },
  ];

  function makeTile(name) {
    const f = (n) => metric(name, n);
    const figs = {
      health: el("span", { class: "health-badge", "data-metric": `${name}:health` }),
      cpu: el("span", {}, f("cpu_util")),
      mem: el("span", {}, f("mem_used"), " / ", f("mem_total")),
      disk: el("span", {}, f("disk_used"), " / ", f("disk_total")),
      net: el("span", {}, "↓", f("net_rx_bps"), " ↑", f("net_tx_bps")),
      gpu: el("span", {}, f("gpu_util"), " ", f("gpu_mem_total")),  // both "–" where a site has no GPU
      jobs: el("span", {}, f("jobs_running"), " / ", f("jobs_total")),
      serve: f("serve_status"), rps: f("inference_rps"), automation: f("automation_rate"),
      images: f("images_total"), model: f("model_version"),
    };
    const byName = {};
    for (const node of Object.values(figs)) {
      for (const m of [node, ...node.querySelectorAll("[data-metric]")]) {
        if (m.dataset.metric) byName[m.dataset.metric.split(":").pop()] = m;
      }
    }
    const error = el("div", { class: "error" });
    const rows = el("div", { class: "rows" });
    const sparkBoxes = {};
    for (const sp of SPARKS) {
      sparkBoxes[sp.key] = el("div", { class: "spark", "data-spark": `${name}:${sp.key}` });
      rows.append(el("span", { class: "k", text: sp.label }), sparkBoxes[sp.key], el("span", { class: "v" }, figs[sp.key]));
    }
    const mix = el("div", { class: "mix", "data-metric": `${name}:defect_mix` });
    const mixLegend = el("div", { class: "mix-legend" });
    const fact = (k, node, wide) => el("div", wide ? { class: "wide" } : {}, el("span", { class: "k", text: k }), node);
    const title = el("h2", { text: name, title: name, "data-metric": `${name}:display_name` });
    const siteId = el("span", { class: "site-id" });  // the DNS name, beside a display name that differs
    const quality = window.AdcpQuality.tileBlock(name);
    const lines = window.AdcpLines.tileBlock(name);  // lines.js: champion, challenger, release stage
    const root = el("article", { class: "tile", tabindex: "0", "data-site": name },
      el("div", { class: "tile-head" }, title, siteId, figs.health), error, rows,
      el("div", { class: "facts" }, fact("jobs", figs.jobs), fact("serve", figs.serve), fact("infer/s", figs.rps),
        fact("auto", figs.automation), fact("images", figs.images), fact("model", figs.model, true)),
      quality.root, lines.root, mix, mixLegend);
    const open = () => { window.location.hash = `site=${encodeURIComponent(name)}`; };
    root.addEventListener("click", open);
    root.addEventListener("keydown", (e) => { if (e.key === "Enter") open(); });
    const charts = {};

    function update(s) {
      const L = s.latest || {};
      setFig(title, s.display_name || name, s.display_name || name);
      title.title = s.display_name && s.display_name !== name ? `${s.display_name} (${name})` : name;
      siteId.textContent = s.display_name && s.display_name !== name ? name : "";
      quality.update(s.quality || null);
      lines.update(s.lines || []);
      root.classList.remove("ok", "warn", "down");
      root.classList.add(s.health);
      figs.health.className = `health-badge ${s.health}`;
      setFig(figs.health, s.health, s.health);
      error.textContent = s.error || "";
      error.title = s.error || "";
      for (const k of ["cpu_util", "gpu_util"]) setFig(byName[k], L[k], fmtPct(L[k]));
      for (const k of ["mem_used", "mem_total", "disk_used", "disk_total", "gpu_mem_total"]) setFig(byName[k], L[k], fmtBytes(L[k]));
      for (const k of ["net_rx_bps", "net_tx_bps"]) setFig(byName[k], L[k], fmtRate(L[k]));
      const jobs = s.jobs || {};
      setFig(byName.jobs_running, jobs.running, fmtNum(jobs.running));
      setFig(byName.jobs_total, jobs.total, fmtNum(jobs.total));
      const serve = s.serve || {};
      const replicas = isNum(serve.replicas_total) ? ` ${serve.replicas_healthy}/${serve.replicas_total}` : "";
      setFig(byName.serve_status, serve.status, (serve.status || "–") + replicas);
      setFig(byName.inference_rps, L.inference_rps, fmtNum(L.inference_rps));
      const automation = isNum(s.automation_rate) ? s.automation_rate : L.automation_rate;
      setFig(byName.automation_rate, automation, fmtShare(automation));
      setFig(byName.images_total, L.images_total, fmtNum(L.images_total));
      setFig(byName.model_version, s.model_version, s.model_version || "–");
      byName.model_version.title = s.model_version || "";
      renderMix(mix, mixLegend, s.defect_mix || {});
      for (const sp of SPARKS) updateSpark(sp, s);
    }

    function updateSpark(sp, s) {
      const data = alignSeries(sp.names.map((n) => (s.spark || {})[n] || []));
      const box = sparkBoxes[sp.key];
      if (data[0].length === 0) {
        if (charts[sp.key]) { charts[sp.key].destroy(); delete charts[sp.key]; }
        return;
      }
      const [lo, hi] = sp.range(s);
      if (!charts[sp.key]) charts[sp.key] = sparkline(box, sp.names.length, [lo, hi]);
      charts[sp.key].setData(data);
    }

    function destroy() {
      for (const c of Object.values(charts)) c.destroy();
      root.remove();
    }
    return { root, update, destroy };
  }

  function renderMix(bar, legend, mix) {
    const entries = Object.entries(mix).filter(([, n]) => isNum(n) && n > 0).sort((a, b) => b[1] - a[1]);
    const total = entries.reduce((acc, [, n]) => acc + n, 0);
    bar.dataset.value = JSON.stringify(mix);
    bar.replaceChildren(...entries.map(([k, n]) => {
      const seg = el("span", { title: `${k}: ${n}` });
      seg.style.width = `${(100 * n) / total}%`;
      seg.style.background = colorFor(k);
      return seg;
    }));
    legend.textContent = total ? entries.slice(0, 3).map(([k, n]) => `${k} ${Math.round((100 * n) / total)}%`).join(" · ")
      : "no defects classified yet";
  }
  function colorFor(key) {
    let h = 0;
    for (const ch of key) h = (h * 31 + ch.codePointAt(0)) >>> 0;
    return PALETTE[h % PALETTE.length];
  }

  // ---------- charts ----------
  function alignSeries(lists) {  // [[ [t, v], ... ], ...] -> uPlot's [xs, ys1, ys2, ...] on the union of times
    const times = [...new Set(lists.flatMap((l) => l.map((p) => p[0])))].sort((a, b) => a - b);
    const index = new Map(times.map((t, i) => [t, i]));
    const ys = lists.map((l) => {
      const col = new Array(times.length).fill(null);
      for (const [t, v] of l) col[index.get(t)] = isNum(v) ? v : null;
      return col;
    });
    return [times, ...ys];
  }

  function sparkline(box, nSeries, [lo, hi]) {
    const series = [{}];
    for (let i = 0; i < nSeries; i += 1) {
      const c = PALETTE[i % PALETTE.length];
      series.push({ stroke: c, fill: i === 0 ? `${c}33` : undefined, width: 1.5, points: { show: false }, spanGaps: true });
    }
    const opts = {
      width: Math.max(40, box.clientWidth), height: Math.max(16, box.clientHeight), pxAlign: false,
      cursor: { show: false }, select: { show: false }, legend: { show: false },
      axes: [{ show: false }, { show: false }], series,
      scales: { x: { time: true }, y: { range: (u, min, max) => [lo ?? Math.min(0, min), hi ?? Math.max(max, 1e-9)] } },
    };
    return fitChart(new uPlot(opts, [[], ...series.slice(1).map(() => [])], box), box);
  }

  function fitChart(chart, box) {  // keep a chart as wide as its box (tiles and charts reflow)
    const ro = new ResizeObserver(() => {
      const w = Math.floor(box.clientWidth);
      if (w > 0 && w !== chart.width) chart.setSize({ width: w, height: chart.height });
    });
    ro.observe(box);
    const destroy = chart.destroy.bind(chart);
    chart.destroy = () => { ro.disconnect(); destroy(); };
    return chart;
  }

  function bigChart(box, names, unit) {
    const fmt = FORMAT[unit];
    const series = [{}, ...names.map((n, i) => ({
      label: n, stroke: PALETTE[i % PALETTE.length], width: 2, points: { show: false }, spanGaps: true,
      value: (u, v) => fmt(v),
    }))];
    const axis = { stroke: "#8b9bb0", grid: { stroke: "#263241" }, ticks: { stroke: "#263241" } };
    const opts = {
      width: Math.max(200, box.clientWidth), height: 220, series,
      axes: [axis, { ...axis, size: 80, values: (u, vals) => vals.map((v) => fmt(v)) }],
      scales: {
        x: { time: true, range: () => st.chartRange },  // the chosen window, even before it has filled
        y: unit === "pct" ? { range: [0, 100] } : { range: (u, min, max) => [0, Math.max(max * 1.1, Y_FLOOR[unit])] },
      },
    };
    return fitChart(new uPlot(opts, [[], ...names.map(() => [])], box), box);
  }

  // ---------- the detail view ----------
  function route() {
    const m = /^#site=(.+)$/.exec(window.location.hash);
    const site = m ? decodeURIComponent(m[1]) : null;
    if (site === st.detail) return;
    closeDetail();
    st.detail = site;
    $("grid-view").hidden = Boolean(site);
    $("detail-view").hidden = !site;
    if (site) openDetail(site);
    else if (st.overview) render();
  }

  function closeDetail() {
    st.detailGen += 1;  // a refresh still in flight for the old view stops at its next check
    for (const c of st.detailCharts) c.chart.destroy();
    st.detailCharts = [];
    $("charts").replaceChildren();
    clearTimeout(st.detailTimer);
  }

  function openDetail(site) {
    $("detail-title").textContent = site;
    $("detail-quality").replaceChildren();
    $("log-job").replaceChildren(el("option", { value: "", text: "site" }));
    $("logs").textContent = "";
    renderDetailFacts();
    refreshDetail(site, st.detailGen);
  }

  function siteEntry(site) {
    return ((st.overview && st.overview.sites) || []).find((s) => s.name === site) || null;
  }

  function renderDetailFacts() {
    const s = siteEntry(st.detail);
    const facts = $("detail-facts");
    const badge = $("detail-health");
    const ray = $("detail-ray");
    if (!s) { facts.textContent = st.overview ? "This site is not in the overview." : "loading…"; return; }
    $("detail-title").textContent = s.display_name && s.display_name !== s.name ? `${s.display_name} (${s.name})` : s.name;
    badge.className = `health-badge ${s.health}`;
    badge.textContent = s.health;
    badge.dataset.metric = `${s.name}:detail_health`;
    if (s.dashboard_url) ray.href = s.dashboard_url;
    ray.hidden = !s.dashboard_url;
    const serve = s.serve || {};
    const rows = [
      ["last scrape", s.last_ok ? `${new Date(s.last_ok).toLocaleTimeString()} (${fmtNum(s.age_s)} s ago)` : "never"],
      ["jobs running", `${fmtNum((s.jobs || {}).running)} of ${fmtNum((s.jobs || {}).total)}`],
      ["serve", `${serve.status || "–"} ${Object.entries(serve.apps || {}).map(([k, v]) => `${k}:${v}`).join(" ")}`],
      ["model", s.model_version || "–"], ["automation", fmtShare(s.automation_rate)],
      ["error", s.error || "none"],
    ];
    facts.replaceChildren(...rows.map(([k, v]) => el("div", {}, el("span", { class: "k", text: k }), el("span", { text: v }))));
  }

  async function refreshDetail(site, gen) {
    if (gen !== st.detailGen || st.loggedOut) return;
    const name = encodeURIComponent(site);
    const step = Math.max(st.intervalMs / 1000, st.windowS / 300);
    await Promise.allSettled([
      getJSON(`${DATA}/sites/${name}/metrics?window_s=${st.windowS}&step=${step}`).then((b) => drawCharts(site, gen, b),
        (e) => { $("charts").dataset.error = e.message; }),
      getJSON(`${DATA}/sites/${name}/jobs`).then((jobs) => renderJobs(jobs), () => {}),
      getJSON(`${DATA}/quality?site=${name}`).then((b) => { if (gen === st.detailGen) window.AdcpQuality.detailTable($("detail-quality"), b); },
        (e) => { $("detail-quality").textContent = `quality unavailable: ${e.message}`; }),
      refreshLogs(site),
    ]);
    if (gen === st.detailGen) st.detailTimer = setTimeout(() => refreshDetail(site, gen), st.intervalMs);
  }

  function drawCharts(site, gen, body) {
    if (gen !== st.detailGen) return;
    const series = body.series || {};
    const since = isNum(body.since) ? body.since : Date.now() / 1000 - st.windowS;
    st.chartRange = [since, since + st.windowS];  // the coordinator's clock, not the screen's
    for (const g of CHARTS) {
      const names = g.names.filter((n) => (series[n] || []).length > 0);
      let entry = st.detailCharts.find((c) => c.id === g.id);
      if (entry && entry.names.join() !== names.join()) {
        entry.chart.destroy(); entry.panel.remove();
        st.detailCharts = st.detailCharts.filter((c) => c !== entry);
        entry = null;
      }
      if (!names.length) continue;
      if (!entry) {
        const plot = el("div", { class: "plot", "data-chart": `${site}:${g.id}` });
        const panel = el("section", { class: "chart" }, el("h3", { text: g.title }), plot);
        $("charts").append(panel);
        entry = { id: g.id, names, panel, chart: bigChart(plot, names, g.unit) };
        st.detailCharts.push(entry);
      }
      entry.chart.setData(alignSeries(names.map((n) => series[n])));
    }
    if (!st.detailCharts.length) $("charts").replaceChildren(el("p", { class: "muted", text: "No history yet for this range." }));
    else $("charts").querySelector("p")?.remove();
  }

  function renderJobs(jobs) {
    const box = $("detail-jobs");
    if (!jobs.length) { box.replaceChildren(el("p", { class: "muted", text: "No coordinator jobs for this site." })); return; }
    const head = el("tr", {}, ...["job", "kind", "status", "for", "updated"].map((h) => el("th", { text: h })));
    const rows = jobs.map((j) => el("tr", {}, el("td", { text: j.id }), el("td", { text: j.kind }),
      el("td", { text: j.status }), el("td", { text: j.origin }),
      el("td", { text: new Date(j.updated_at).toLocaleString() })));
    box.replaceChildren(el("table", { class: "jobs-table" }, el("thead", {}, head), el("tbody", {}, ...rows)));
    const select = $("log-job");
    const known = new Set([...select.options].map((o) => o.value));
    for (const j of jobs) {
      for (const a of j.attempts || []) {
        if (a.submission_id && !known.has(a.submission_id)) {
          select.append(el("option", { value: a.submission_id, text: `${j.id} (${a.submission_id})` }));
          known.add(a.submission_id);
        }
      }
    }
  }

  async function refreshLogs(site) {
    const job = $("log-job").value;
    const q = `lines=200${job ? `&job=${encodeURIComponent(job)}` : ""}`;
    const pre = $("logs");
    try {
      const body = await getJSON(`${DATA}/sites/${encodeURIComponent(site)}/logs?${q}`);
      if (st.detail !== site) return;
      const atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
      pre.textContent = (body.lines || []).join("\n") || "(no log lines)";
      $("log-source").textContent = body.source || "";
      if (atBottom) pre.scrollTop = pre.scrollHeight;
    } catch (e) {
      pre.textContent = `logs unavailable: ${e.message}`;
    }
  }

  // ---------- wiring ----------
  function wire() {
    $("detail-back").addEventListener("click", () => { window.location.hash = ""; });
    $("home-link").addEventListener("click", (e) => { e.preventDefault(); window.location.hash = ""; });
    $("page-prev").addEventListener("click", () => { st.page -= 1; st.rotateAt = Date.now() + ROTATE_MS; if (st.overview) render(); });
    $("page-next").addEventListener("click", () => { st.page += 1; st.rotateAt = Date.now() + ROTATE_MS; if (st.overview) render(); });
    for (const b of $("ranges").querySelectorAll("button")) {
      b.addEventListener("click", () => {
        st.windowS = Number(b.dataset.window);
        for (const o of $("ranges").querySelectorAll("button")) o.classList.toggle("active", o === b);
        if (st.detail) { closeDetail(); refreshDetail(st.detail, st.detailGen); }
      });
    }
    $("log-job").addEventListener("change", () => { if (st.detail) refreshLogs(st.detail); });
    window.addEventListener("hashchange", route);
    window.addEventListener("resize", () => { if (st.overview) render(); });
  }

  wire();
  route();
  poll();
})();
