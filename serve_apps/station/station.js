/* The review station page: log in, claim a batch, judge one image after another by key.
   Plain JS, no build step. All links are relative, so the page works under /review/ and behind the
   site gateway's longer prefixes. Verdicts are sent in order (one promise chain), so an undo always
   follows the verdict it undoes; the screen moves on at once, so a reviewer never waits for the
   network. The next images are fetched and decoded ahead (Image objects on blob URLs). */
(() => {
  "use strict";
  const STRINGS = window.STATION_STRINGS;
  const LANG_KEY = "adcp.station.lang";
  const TOKEN_KEY = "adcp.station.token";
  const HEADER = "X-Adcp-Station-Token";
  const BATCH = 10;        // items per claim: small, so two reviewers share a short queue
  const LOW = 6;           // claim more when fewer than this are left (a claim can take a while)
  const PREFETCH = 5;      // images decoded ahead
  const KEEP_DONE = 30;    // judged items kept (undo, second opinion) with their images
  const QUEUE_POLL_MS = 10000;
  const EMPTY_POLL_MS = 4000;

  const $ = (id) => document.getElementById(id);
  const st = {
    lang: STRINGS[localStorage.getItem(LANG_KEY)] ? localStorage.getItem(LANG_KEY) : "zh",
    token: sessionStorage.getItem(TOKEN_KEY) || "",
    me: null, classes: [], byName: new Map(),
    queue: [],            // items not judged yet; queue[0] is on screen
    done: [],             // [{item, label}] newest last
    known: new Set(),     // item ids this page has held
    images: new Map(),    // item id -> {promise, url}
    chain: Promise.resolve(),
    claiming: null, firstClaim: true, emptyTimer: null, timers: [],
    shownId: null, zoom: 1, contrast: false, count: 0, firstAt: 0, lastQueue: null,
  };
  // What this page showed, in order (the browser test compares two reviewers' lists).
  window.station = { shown: [] };
  let queueSoonTimer = null;
  const claims = [];  // (asked, got) of each claim, for window.station.state()

  window.station.state = () => ({ queue: st.queue.map((x) => x.id), done: st.done.length, claiming: !!st.claiming,
                                   known: st.known.size, claims, shownId: st.shownId });
  const t = (key) => (STRINGS[st.lang] && STRINGS[st.lang][key]) || STRINGS.zh[key] || key;

  // -- language -------------------------------------------------------------------------------
  function applyLang() {
    document.documentElement.lang = st.lang === "zh" ? "zh-CN" : "en";
    document.querySelectorAll("[data-i18n]").forEach((el) => { el.textContent = t(el.dataset.i18n); });
    document.querySelectorAll("[data-i18n-aria]").forEach((el) => el.setAttribute("aria-label", t(el.dataset.i18nAria)));
    document.querySelectorAll("[data-i18n-placeholder]").forEach((el) => { el.placeholder = t(el.dataset.i18nPlaceholder); });
    document.title = ($("site-name").textContent ? $("site-name").textContent + " · " : "") + t("title");
    $("image").alt = t("image_alt");
    if (st.me) { renderButtons(); renderItem(); renderProgress(); renderQueue(st.lastQueue); }
    $("contrast-state").textContent = t(st.contrast ? "contrast_on" : "contrast_off");
  }
  $("lang").addEventListener("click", () => {
    st.lang = st.lang === "zh" ? "en" : "zh";
    localStorage.setItem(LANG_KEY, st.lang);
    applyLang();
  });

  // -- talking to the station ------------------------------------------------------------------
  async function api(method, path, body) {
    if (!st.token && path !== "api/login") throw Object.assign(new Error(t("session_ended")), { status: 0, body: {} });
    const headers = { Accept: "application/json" };
    if (st.token) headers[HEADER] = st.token;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const r = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
    let data = null;
    try { data = await r.json(); } catch (_) { data = null; }
    if (!r.ok) {
      const e = new Error((data && data.detail) || r.statusText || String(r.status));
      e.status = r.status; e.body = data || {};
      if (r.status === 401 && path !== "api/login") sessionEnded();
      throw e;
    }
    return data;
  }
  const later = (fn) => { st.chain = st.chain.then(fn).catch((e) => toast(e.message, true)); return st.chain; };

  let toastTimer = null;
  function toast(text, bad) {
    const el = $("status");
    el.textContent = text;
    el.classList.toggle("bad", !!bad);
    el.classList.add("show");
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => el.classList.remove("show"), bad ? 5000 : 1500);
  }

  // -- login -----------------------------------------------------------------------------------
  $("login-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const kind = document.querySelector('input[name="kind"]:checked').value;
    const value = $("credential").value.trim();
    $("login-error").textContent = "";
    $("login-submit").disabled = true;
    try {
      const r = await api("POST", "api/login", { [kind]: value });
      st.token = r.token;
      sessionStorage.setItem(TOKEN_KEY, st.token);
      $("credential").value = "";
      await start();
    } catch (e) {
      const allowed = e.body && e.body.allowed ? ` (${t("allowed")}: ${e.body.allowed})` : "";
      const hint = e.body && e.body.hint ? ` ${e.body.hint}` : "";
      $("login-error").textContent = `${t("login_failed")} [${e.status || "?"}]: ${e.message}${allowed}${hint}`;
    } finally {
      $("login-submit").disabled = false;
    }
  });

  function showLogin(message) {
    st.me = null;
    $("station-view").hidden = true;
    $("login-view").hidden = false;
    $("logout").hidden = true;
    $("who").hidden = true;
    if (message) $("login-error").textContent = message;
    $("credential").focus();
  }

  function sessionEnded() {
    if (!st.me) return;
    stop();
    st.token = "";
    sessionStorage.removeItem(TOKEN_KEY);
    showLogin(t("session_ended"));
  }

  $("logout").addEventListener("click", async () => {
    const token = st.token;
    stop();
    st.token = "";
    sessionStorage.removeItem(TOKEN_KEY);
    try {  // give the claimed items back first, so the next reviewer gets them at once
      await fetch("api/release", { method: "POST", headers: { [HEADER]: token, "Content-Type": "application/json" },
                                   body: "{}", signal: AbortSignal.timeout(5000) });
    } catch (_) { /* the leases run out by themselves */ }
    showLogin("");
  });

  async function start() {
    st.me = await api("GET", "api/me");
    $("site-name").textContent = st.me.display_name || st.me.site;
    $("who").textContent = `${st.me.user} · ${st.me.role}`;
    $("who").hidden = false;
    $("logout").hidden = false;
    $("login-view").hidden = true;
    $("station-view").hidden = false;
    st.classes = st.me.classes.slice();
    st.byName = new Map(st.classes.map((c) => [c.name, c]));
    applyLang();
    document.activeElement && document.activeElement.blur();
    refill();
    pollQueue();
    st.timers.push(setInterval(pollQueue, QUEUE_POLL_MS));
    // Claiming nothing renews the leases on what this page holds.
    const renewMs = Math.max(5000, Math.min(60000, (st.me.lease_s || 300) * 1000 / 3));
    st.timers.push(setInterval(() => { api("POST", "api/claim", { n: 0 }).catch(() => {}); }, renewMs));
  }

  function stop() {
    st.timers.forEach(clearInterval);
    st.timers = [];
    clearTimeout(st.emptyTimer);
    clearTimeout(queueSoonTimer);
    queueSoonTimer = null;
    st.images.forEach((e) => e.url && URL.revokeObjectURL(e.url));
    Object.assign(st, { queue: [], done: [], known: new Set(), images: new Map(), claiming: null, firstClaim: true,
                        shownId: null, count: 0, firstAt: 0, lastQueue: null, chain: Promise.resolve() });
    $("image").removeAttribute("src");
    $("image").removeAttribute("data-item-id");
  }

  // -- the queue of items ------------------------------------------------------------------------
  function refill() {
    if (st.claiming || !st.me || st.queue.length >= LOW) return;
    const include = st.firstClaim;
    st.claiming = api("POST", "api/claim", { n: BATCH, include_held: include })
      .then((r) => {
        claims.push([BATCH, r.items.length]);
        st.firstClaim = false;
        let added = 0;
        for (const item of r.items) {
          if (st.known.has(item.id)) continue;
          st.known.add(item.id);
          st.queue.push(item);
          for (const c of item.classes || []) addClass(c);
          added += 1;
        }
        if (!added && !st.queue.length) {
          clearTimeout(st.emptyTimer);
          st.emptyTimer = setTimeout(refill, EMPTY_POLL_MS);
        }
      })
      .catch((e) => { toast(e.message, true); st.emptyTimer = setTimeout(refill, EMPTY_POLL_MS); })
      .finally(() => { st.claiming = null; prefetch(); renderItem(); queueSoon(); });
  }

  function addClass(name) {
    if (st.byName.has(name)) return;
    const used = new Set(st.classes.map((c) => c.key));
    let key = "";
    for (let k = 1; k <= 9; k++) if (!used.has(String(k))) { key = String(k); break; }
    const c = { name, display_name: name, key };
    st.classes.splice(st.classes.length - 1, 0, c);  // before false_defect
    st.byName.set(name, c);
    renderButtons();
  }

  function image(item) {
    let entry = st.images.get(item.id);
    if (entry) return entry.promise;
    entry = { url: null };
    const get = () => fetch(item.image_url, { headers: { [HEADER]: st.token } });
    entry.promise = get()
      .then((r) => (r.ok || r.status === 401 || r.status === 404 ? r : get()))  // one retry of a hiccup
      .then((r) => { if (!r.ok) throw new Error(`image ${item.image_sha256.slice(0, 12)}: ${r.status}`); return r.blob(); })
      .then((blob) => {
        entry.url = URL.createObjectURL(blob);
        const img = new Image();
        img.src = entry.url;
        return img.decode().then(() => entry);
      });
    entry.promise.catch(() => st.images.delete(item.id));
    st.images.set(item.id, entry);
    return entry.promise;
  }

  function prefetch() { st.queue.slice(0, PREFETCH).forEach((item) => image(item).catch(() => {})); }

  function forget() {
    while (st.done.length > KEEP_DONE) {
      const old = st.done.shift();
      const e = st.images.get(old.item.id);
      if (e && e.url) URL.revokeObjectURL(e.url);
      st.images.delete(old.item.id);
    }
  }

  // -- drawing ---------------------------------------------------------------------------------
  const className = (name) => {
    const c = st.byName.get(name);
    if (!c) return name;
    return st.lang === "zh" ? c.display_name : name.replace(/_/g, " ");
  };
  const productName = (code) => (st.me && st.me.products && st.me.products[code]) || code || "–";
  const pct = (x) => `${(100 * Number(x || 0)).toFixed(1)}%`;

  function renderButtons() {
    const box = $("class-buttons");
    box.textContent = "";
    for (const c of st.classes) {
      const b = document.createElement("button");
      b.type = "button";
      b.className = "verdict" + (c.name === "false_defect" ? " false" : "");
      b.dataset.label = c.name;
      b.id = `btn-${c.name}`;
      const main = className(c.name);
      const other = st.lang === "zh" ? c.name : c.display_name;
      const keyText = c.key || "";
      b.setAttribute("aria-label", `${main}${keyText ? ` (${keyText})` : ""}`);
      b.innerHTML = `<kbd></kbd><span class="name"></span>`;
      b.querySelector("kbd").textContent = keyText || "·";
      const name = b.querySelector(".name");
      name.textContent = main;
      if (other && other !== main) {
        const sub = document.createElement("span");
        sub.className = "sub";
        sub.textContent = other;
        name.appendChild(sub);
      }
      box.appendChild(b);
    }
    ["btn-unsure", "btn-undo", "btn-second"].forEach((id) => {
      const b = $(id);
      b.setAttribute("aria-label", `${b.querySelector(".name").textContent} (${b.querySelector("kbd").textContent})`);
    });
    markButtons();
  }

  function markButtons() {
    const item = st.queue[0];
    const allowed = item && item.classes && item.classes.length ? new Set([...item.classes, "false_defect", "unsure"]) : null;
    document.querySelectorAll("#class-buttons .verdict").forEach((b) => {
      b.disabled = !!allowed && !allowed.has(b.dataset.label);
      b.classList.toggle("predicted-class", !!item && item.predicted === b.dataset.label);
    });
  }

  function renderItem() {
    const item = st.queue[0];
    const img = $("image");
    $("empty").hidden = !!item;
    if (!item) {
      $("empty").textContent = st.claiming ? t("loading") : t("queue_empty");
      img.hidden = true;
      img.removeAttribute("data-item-id");
      st.shownId = null;
      ["predicted", "confidence", "product", "aoi-machine", "panel", "why", "model-version"].forEach((id) => { $(id).textContent = ""; });
      $("top3").textContent = "";
      markButtons();
      return;
    }
    $("predicted").textContent = className(item.predicted);
    $("confidence").textContent = `${t("confidence")} ${pct(item.confidence)}`;
    const top = $("top3");
    top.textContent = "";
    for (const x of item.top3 || []) {
      const li = document.createElement("li");
      li.textContent = `${className(x.class)} ${pct(x.confidence)}`;
      top.appendChild(li);
    }
    $("product").textContent = item.product && productName(item.product) !== item.product
      ? `${productName(item.product)} (${item.product})` : productName(item.product);
    $("aoi-machine").textContent = item.aoi_machine || "–";
    $("panel").textContent = item.panel_id || "–";
    const why = $("why");
    why.textContent = t(`why_${item.why}`) === `why_${item.why}` ? item.why : t(`why_${item.why}`);
    if (item.second_opinion) {
      const tag = document.createElement("span");
      tag.className = "tag";
      tag.textContent = t("second_opinion_tag");
      why.appendChild(tag);
    }
    $("model-version").textContent = item.model_version || "–";
    markButtons();
    if (st.shownId === item.id) return;
    image(item).then((entry) => {
      if (st.queue[0] !== item) return;  // judged while it loaded
      img.src = entry.url;
      img.hidden = false;
      st.zoom = 1;
      applyView();
      img.dataset.itemId = item.id;
      if (st.shownId !== item.id) window.station.shown.push(item.id);
      st.shownId = item.id;
    }).catch((e) => {
      if (st.queue[0] !== item) return;
      toast(e.message, true);
      st.queue.shift();  // an image that cannot be read: leave it to the lease and move on
      renderItem();
    });
  }

  function renderProgress() {
    $("done-count").textContent = String(st.count);
    const mins = (Date.now() - st.firstAt) / 60000;  // a rate once there is a few seconds to measure
    $("rate").textContent = st.count > 1 && mins > 0.15 ? `${Math.round(st.count / mins)} ${t("per_min")}` : "–";
    const last = st.done[st.done.length - 1];
    $("last-verdict").textContent = last ? (last.label === "unsure" ? t("unsure") : className(last.label)) : "–";
  }

  function age(s) {
    s = Math.max(0, Number(s || 0));
    if (s < 90) return `${Math.round(s)} ${t("seconds")}`;
    if (s < 5400) return `${Math.round(s / 60)} ${t("minutes")}`;
    if (s < 172800) return `${Math.round(s / 3600)} ${t("hours")}`;
    return `${Math.round(s / 86400)} ${t("days")}`;
  }

  function renderQueue(q) {
    if (!q) return;
    st.lastQueue = q;
    $("queue-total").textContent = String(q.total);
    const body = $("queue-rows");
    body.textContent = "";
    for (const row of q.by_product) {
      const tr = document.createElement("tr");
      tr.dataset.product = row.product;
      const name = st.lang === "zh" ? (row.display_name || row.product) : (row.product || row.display_name);
      for (const [text, cls] of [[name || "–", ""], [row.queued, ""], [row.claimed, ""],
                                 [age(row.oldest_age_s), row.oldest_age_s > 3600 ? "old" : ""]]) {
        const td = document.createElement("td");
        td.textContent = String(text);
        if (cls) td.className = cls;
        tr.appendChild(td);
      }
      body.appendChild(tr);
    }
  }

  function pollQueue() { api("GET", "api/queue").then(renderQueue).catch(() => {}); }
  function queueSoon() {  // after verdicts: one refresh of the side panel, not one per key
    if (queueSoonTimer) return;
    queueSoonTimer = setTimeout(() => { queueSoonTimer = null; pollQueue(); }, 1500);
  }

  // -- verdicts ----------------------------------------------------------------------------------
  function flash(id) {
    const b = $(id);
    if (!b) return;
    b.classList.add("flash");
    setTimeout(() => b.classList.remove("flash"), 150);
  }

  function judge(label) {
    const item = st.queue[0];
    if (!item || st.shownId !== item.id) return;  // nothing on screen yet
    if (item.classes && item.classes.length && label !== "unsure" && label !== "false_defect"
        && !item.classes.includes(label)) { toast(t("not_allowed"), true); return; }
    flash(label === "unsure" ? "btn-unsure" : `btn-${label}`);
    st.queue.shift();
    const entry = { item, label };
    st.done.push(entry);
    st.count += 1;
    if (!st.firstAt) st.firstAt = Date.now();
    forget();
    renderItem();
    renderProgress();
    prefetch();
    refill();
    later(() => api("POST", "api/verdict", { item_id: item.id, label }).then((ev) => { entry.event = ev; queueSoon(); })
      .catch((e) => {
        entry.failed = true;
        st.count -= 1;
        renderProgress();
        throw new Error(`${t("verdict_failed")}: ${e.message}`);
      }));
  }

  function undo() {
    let i = st.done.length - 1;
    while (i >= 0 && st.done[i].failed) i -= 1;
    if (i < 0) { toast(t("nothing_to_undo")); return; }
    flash("btn-undo");
    const [entry] = st.done.splice(i, 1);
    st.queue.unshift(entry.item);  // on screen again at once; the server agrees below
    st.count -= 1;
    renderItem();
    renderProgress();
    later(() => api("POST", "api/undo", {}).then((ev) => {
      if (ev.item_id !== entry.item.id) {  // the server undid another verdict (one of ours failed)
        st.queue = st.queue.filter((x) => x !== entry.item);
        const other = st.done.findIndex((d) => d.item.id === ev.item_id);
        if (other >= 0) st.queue.unshift(st.done.splice(other, 1)[0].item);
        renderItem();
      }
      toast(t("undone"));
    }).catch((e) => {
      st.queue = st.queue.filter((x) => x !== entry.item);
      st.done.push(entry);
      st.count += 1;
      renderItem();
      renderProgress();
      throw new Error(e.status === 404 ? t("nothing_to_undo") : e.message);
    }));
  }

  function secondOpinion() {
    const entry = [...st.done].reverse().find((d) => !d.failed && !d.second);
    if (!entry) { toast(t("nothing_for_second")); return; }
    flash("btn-second");
    entry.second = true;
    later(() => api("POST", "api/second-opinion", { item_id: entry.item.id }).then(() => toast(t("second_sent"))));
  }

  // -- looking at the image ----------------------------------------------------------------------
  function applyView() {
    const img = $("image");
    img.style.transform = st.zoom === 1 ? "" : `scale(${st.zoom})`;
    img.classList.toggle("contrast", st.contrast);
    $("zoom-level").textContent = `${Math.round(st.zoom * 100)}%`;
    $("contrast-state").textContent = t(st.contrast ? "contrast_on" : "contrast_off");
  }
  function zoomBy(f, origin) {
    st.zoom = Math.min(16, Math.max(1, st.zoom * f));
    if (origin) $("image").style.transformOrigin = origin;
    if (st.zoom === 1) $("image").style.transformOrigin = "50% 50%";
    applyView();
  }
  $("viewer").addEventListener("wheel", (ev) => {
    ev.preventDefault();
    const r = $("image").getBoundingClientRect();
    const ox = r.width ? ((ev.clientX - r.left) / r.width) * 100 : 50;
    const oy = r.height ? ((ev.clientY - r.top) / r.height) * 100 : 50;
    zoomBy(ev.deltaY < 0 ? 1.25 : 0.8, st.zoom === 1 ? `${ox}% ${oy}%` : null);
  }, { passive: false });

  // -- keys and taps -----------------------------------------------------------------------------
  document.addEventListener("keydown", (ev) => {
    if (!st.me || $("station-view").hidden) return;
    const tag = ev.target && ev.target.tagName;
    if (tag === "INPUT" || tag === "TEXTAREA") return;
    if (ev.altKey || ev.metaKey) return;
    const k = ev.key;
    if (ev.ctrlKey) { if (k === "z" || k === "Z") { ev.preventDefault(); undo(); } return; }
    let done = true;
    if (/^[1-9]$/.test(k)) {
      const c = st.classes.find((x) => x.key === k);
      if (c && !ev.repeat) judge(c.name); else done = !!c;
    } else if (k === "f" || k === "F") { if (!ev.repeat) judge("false_defect"); }
    else if (k === "u" || k === "U" || k === "?") { if (!ev.repeat) judge("unsure"); }
    else if (k === "z" || k === "Z" || k === "Backspace") { if (!ev.repeat) undo(); }
    else if (k === "s" || k === "S") { if (!ev.repeat) secondOpinion(); }
    else if (k === "+" || k === "=") zoomBy(1.25);
    else if (k === "-" || k === "_") zoomBy(0.8);
    else if (k === "0") { st.zoom = 1; $("image").style.transformOrigin = "50% 50%"; applyView(); }
    else if (k === "c" || k === "C") { st.contrast = !st.contrast; applyView(); }
    else done = false;
    if (done) ev.preventDefault();
  });

  document.querySelector(".side").addEventListener("click", (ev) => {
    const b = ev.target.closest("button");
    if (!b || b.disabled) return;
    if (b.dataset.label) judge(b.dataset.label);
    else if (b.dataset.action === "undo") undo();
    else if (b.dataset.action === "second") secondOpinion();
    b.blur();  // keys keep working after a tap or click
  });

  // -- start -------------------------------------------------------------------------------------
  applyLang();
  fetch("healthz").then((r) => r.json()).then((h) => {
    if (!$("site-name").textContent) $("site-name").textContent = h.display_name || h.site || "";
    applyLang();
  }).catch(() => {});
  if (st.token) {
    start().catch(() => { st.token = ""; sessionStorage.removeItem(TOKEN_KEY); showLogin(""); });
  } else {
    showLogin("");
  }
})();
