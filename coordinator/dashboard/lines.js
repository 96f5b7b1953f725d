// Model lines on the big screen (plain JS, loaded before app.js): a block on each site tile with
// every line the site serves: its champion, its challenger when one is on its way, and the stage
// of the line's active release (from the overview's `lines` of that site). Every figure carries
// data-metric="<site>:line:<line>:<champion|challenger|stage>" and data-value=<raw>, as app.js's
// figures do, so tests can compare the page with the API.
"use strict";

window.AdcpLines = (() => {
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

  function fig(site, line, key, raw, text) {
    const node = el("span", { class: `lv ${key}`, "data-metric": `${site}:line:${line}:${key}`, text });
    node.dataset.value = raw === null || raw === undefined ? "" : String(raw);
    return node;
  }

  // The block on a site's tile: update(lines) with the overview's `lines` of that site.
  function tileBlock(site) {
    const root = el("div", { class: "lines none", "data-lines": site });
    let last = "";

    function update(lines) {
      const list = Array.isArray(lines) ? lines : [];
      const key = JSON.stringify(list);
      if (key === last) return;  // redraw only on a change (the overview is polled every few seconds)
      last = key;
      root.classList.toggle("none", list.length === 0);
      const rows = list.map((l) => {
        const stage = l.stage ? `${l.stage}${l.status && l.status !== "running" ? ` (${l.status})` : ""}`
          + (l.site_state ? ` · ${l.site_state}` : "") : "";
        return el("div", { class: "lrow", "data-line": l.line },
          el("span", { class: "k", text: l.line, title: `model line ${l.line}` }),
          fig(site, l.line, "champion", l.champion, l.champion ? `★ ${l.champion}` : "–"),
          l.challenger ? fig(site, l.line, "challenger", l.challenger, `→ ${l.challenger}`) : "",
          stage ? fig(site, l.line, "stage", l.stage, stage) : "");
      });
      root.replaceChildren(el("div", { class: "ltitle", text: "model lines (champion → challenger, release)" }), ...rows);
    }
    return { root, update };
  }

  return { tileBlock };
})();
