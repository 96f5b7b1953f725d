// Production quality on the big screen (plain JS, loaded before app.js): a block on each site tile
// (automation, escape and overkill with the counts behind them, review backlog and its oldest age,
// from the overview's `quality` summary) and the detail view's table per product and model version
// (from /dashboard/data/quality?site=). Every figure carries data-metric="<site>:q_<name>" and
// data-value=<raw>, as app.js's figures do, so tests can compare the page with the API.
"use strict";

window.AdcpQuality = (() => {
  const isNum = (v) => typeof v === "number" && Number.isFinite(v);

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

  // "0.37 % (3/812)": a rate with the counts behind it; "– (0/0)" when nothing is behind it.
  function rate(value, part, whole) {
    const shown = isNum(value) ? `${(value * 100).toFixed(value < 0.1 ? 2 : 1)} %` : "–";
    return `${shown} (${isNum(part) ? part : 0}/${isNum(whole) ? whole : 0})`;
  }
  function age(seconds) {
    if (!isNum(seconds) || seconds <= 0) return "–";
    if (seconds < 120) return `${Math.round(seconds)} s`;
    if (seconds < 7200) return `${Math.round(seconds / 60)} min`;
    if (seconds < 2 * 86400) return `${(seconds / 3600).toFixed(1)} h`;
    return `${(seconds / 86400).toFixed(1)} d`;
  }
  const FIGURES = [  // [key in data-metric, label, text of a figures object]
    ["automation_rate", "automation", (q) => rate(q.automation_rate, q.automatic, q.classified)],
    ["escape_rate", "escape", (q) => rate(q.escape_rate, q.escapes, q.audited_false_defect)],
    ["overkill_rate", "overkill", (q) => rate(q.overkill_rate, q.overkill, q.audited_defect)],
    ["backlog", "backlog", (q) => `${isNum(q.backlog) ? q.backlog : 0} · oldest ${age(q.oldest_age_s)}`],
  ];

  function setFig(node, raw, text) {
    node.dataset.value = raw === null || raw === undefined ? "" : String(raw);
    node.textContent = text;
  }

  // The block on a site's tile: update(summary) with the overview's `quality` of that site.
  function tileBlock(site) {
    const figs = {};
    const rows = FIGURES.map(([key, label]) => {
      figs[key] = el("span", { class: "qv", "data-metric": `${site}:q_${key}` });
      return el("div", { class: "qrow" }, el("span", { class: "k", text: label }), figs[key]);
    });
    const state = el("div", { class: "qstate", "data-metric": `${site}:q_stale` });
    const root = el("div", { class: "quality", "data-quality": site },
      el("div", { class: "qtitle", text: "quality (review verdicts)" }), ...rows, state);

    function update(q) {
      root.classList.toggle("none", !q);
      root.classList.toggle("stale", Boolean(q && q.stale));
      if (!q) {
        for (const [key] of FIGURES) setFig(figs[key], null, "–");
        setFig(state, null, "no review stats yet");
        return;
      }
      for (const [key, , text] of FIGURES) setFig(figs[key], q[key], text(q));
      figs.backlog.title = `oldest waiting ${age(q.oldest_age_s)}`;
      const at = q.updated_at ? new Date(q.updated_at).toLocaleTimeString() : "never";
      setFig(state, q.stale, q.stale ? `STALE: last read ${at}${q.error ? ` (${q.error})` : ""}` : `read ${at}`);
      state.title = q.error || "";
    }
    return { root, update };
  }

  // The detail view's table: one row per product and model version of a site's report.
  function detailTable(box, body) {
    const site = ((body && body.sites) || [])[0];
    if (!site) { box.replaceChildren(el("p", { class: "muted", text: "No review stats for this site." })); return; }
    const head = el("tr", {}, ...["product", "model", "automation", "escape", "overkill", "backlog", "oldest"]
      .map((h) => el("th", { text: h })));
    const row = (g, label, model, key) => el("tr", { "data-quality-row": key },
      el("td", { text: label }), el("td", { text: model }),
      ...FIGURES.slice(0, 3).map(([k, , text]) => {
        const td = el("td", { "data-metric": `${site.site}:q_${key}:${k}`, text: text(g) });
        td.dataset.value = g[k] === null || g[k] === undefined ? "" : String(g[k]);
        return td;
      }),
      el("td", { text: String(g.backlog ?? 0) }), el("td", { text: age(g.oldest_age_s) }));
    const rows = (site.by || []).map((g) => row(g, g.product_display_name || g.product || "(no product)",
      g.model_version || "–", `${g.product}|${g.model_version}`));
    rows.push(row(site, "all products", "", "all"));
    const note = site.stale ? el("p", { class: "qstate stale", text: `STALE: ${site.error || "the last read failed"}` }) : "";
    box.replaceChildren(el("table", { class: "jobs-table quality-table" }, el("thead", {}, head), el("tbody", {}, ...rows)), note);
  }

  return { tileBlock, detailTable, rate, age };
})();
