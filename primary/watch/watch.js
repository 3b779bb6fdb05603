// broadsheet /watch: each read node by region, each public TXID's arrival on
// every node as a waterfall, each node's lag over the last minutes. Reads
// the state once (data-state), then follows the event stream (data-events).
(function () {
  "use strict";
  const root = document.getElementById("broadsheet-watch");
  if (!root) return;
  const WINDOW_S = 300;     // the lag charts' span
  const SHOWN = 8;          // waterfalls on the page
  const nodes = new Map();  // name -> node (the control plane's NodeInfo)
  const lag = new Map();    // name -> [[t ms, lag_ms, state], …]
  const publishes = new Map();  // txid -> PropagationRecord
  let primaryTxid = 0, primaryBytes = null, live = false, queued = false;
  const state = {interval: 1};

  const SVG = "http://www.w3.org/2000/svg";
  function esc(s) {
    return String(s == null ? "" : s).replace(/[&<>"']/g, c => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"})[c]);
  }
  function ms(v) { return v >= 10000 ? (v / 1000).toFixed(1) + " s" : Math.round(v) + " ms"; }
  function bytes(n) {
    if (n == null) return "";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return (i ? n.toFixed(1) : n) + " " + units[i];
  }
  function ago(iso) {
    if (!iso) return "";
    const s = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
    return s < 90 ? Math.round(s) + " s" : s < 5400 ? Math.round(s / 60) + " min" : Math.round(s / 3600) + " h";
  }
  function clock(iso) {
    const d = new Date(iso);
    return isNaN(d) ? "" : d.toLocaleTimeString([], {hour12: false}) + "." + String(d.getMilliseconds()).padStart(3, "0");
  }
  // A node's colour: the same on its card, its waterfall rows, its chart.
  const PALETTE = ["#276890", "#c0392b", "#16a085", "#8e44ad", "#d68910", "#2c3e50", "#b03a78", "#567d2e"];
  function colour(name) {
    const names = [...nodes.keys()].sort();
    const i = names.indexOf(name);
    return PALETTE[(i < 0 ? 0 : i) % PALETTE.length];
  }
  const STATES = {
    "live": "live", "behind": "behind", "joining": "joining", "cut off": "cut off",
  };
  function stateClass(state) { return "bw-state-" + String(state || "live").replace(/\W+/g, "-"); }

  // -- read nodes, by region -------------------------------------------------
  function nodeDetail(n) {
    if (n.state === "joining") {
      // A read node answers once its first copy of public.db has arrived.
      return `no answer yet, for ${ago(n.since)}: its first copy of public.db` +
        (primaryBytes != null ? ` (${bytes(primaryBytes)})` : "") + ` has not arrived, or it is down`;
    }
    if (n.state === "cut off") {
      const heard = typeof n.last_heard_s === "number" ? ` (last heard from it ${ms(n.last_heard_s * 1000)} ago)` : "";
      const why = !n.connected ? "does not answer" : `cannot reach the primary${heard}`;
      return `${why}; it serves TXID ${n.txid}` + (n.behind_txids ? `, behind by ${n.behind_txids}` : "");
    }
    if (n.behind_txids) return `behind by ${n.behind_txids} TXID${n.behind_txids === 1 ? "" : "s"}, for ${ms(n.lag_ms)}`;
    return "has every public TXID";
  }
  function lagChart(name) {
    // The last WINDOW_S seconds, or less while there is less to show.
    const W = 240, H = 54, now = Date.now();
    const all = lag.get(name) || [];
    const first = Math.min(now - 60000, ...all.slice(0, 1).map(s => s[0]));
    const span = Math.min(WINDOW_S * 1000, Math.max(60000, now - first)), from = now - span;
    const samples = all.filter(s => s[0] >= from);
    // Each publish's arrival on this node: a dot at its commit time.
    const dots = [];
    for (const p of publishes.values()) {
      const t = Date.parse(p.committed_at), a = p.nodes.find(x => x.name === name);
      if (t >= from && a && a.ms != null) dots.push([t, a.ms]);
    }
    const top = niceTop(Math.max(10, ...samples.map(s => s[1]), ...dots.map(d => d[1])));
    const x = t => ((t - from) / span) * (W - 4) + 2, y = v => H - 14 - (v / top) * (H - 26);
    let out = `<svg class="bw-lag" xmlns="${SVG}" viewBox="0 0 ${W} ${H}" width="100%" role="img"` +
      ` aria-label="lag of ${esc(name)} over the last ${Math.round(span / 60000)} minutes">`;
    // Stretches cut off or joining: shaded.
    const step = Math.max(1, ((state.interval * 1000) / span) * W);
    for (const s of samples) {
      if (s[2] === "cut off" || s[2] === "joining") {
        out += `<rect x="${x(s[0]).toFixed(1)}" y="10" width="${step.toFixed(1)}" height="${H - 24}" class="bw-shade-${s[2] === "joining" ? "joining" : "cut"}"/>`;
      }
    }
    out += `<line x1="2" x2="${W - 2}" y1="${y(0)}" y2="${y(0)}" class="bw-axis"/>` +
      `<line x1="2" x2="${W - 2}" y1="${y(top)}" y2="${y(top)}" class="bw-grid"/>`;
    if (samples.length > 1) {
      const pts = samples.map(s => `${x(s[0]).toFixed(1)},${y(s[1]).toFixed(1)}`).join(" ");
      out += `<polyline points="${pts}" fill="none" stroke="${colour(name)}" stroke-width="1.5" stroke-linejoin="round"/>`;
    }
    for (const [t, v] of dots) {
      out += `<circle cx="${x(t).toFixed(1)}" cy="${y(v).toFixed(1)}" r="2.5" fill="${colour(name)}"><title>${ms(v)}</title></circle>`;
    }
    out += `<text x="2" y="8" class="bw-tick">${ms(top)}</text>` +
      `<text x="2" y="${H - 3}" class="bw-tick">−${Math.round(span / 60000)} min</text>` +
      `<text x="${W - 2}" y="${H - 3}" class="bw-tick" text-anchor="end">now</text>` +
      `<text x="${W / 2}" y="${H - 3}" class="bw-tick" text-anchor="middle">lag; dots: each TXID's arrival</text>`;
    return out + "</svg>";
  }
  function renderNodes() {
    const regions = new Map();
    for (const n of [...nodes.values()].sort((a, b) => a.name.localeCompare(b.name))) {
      const r = n.region || "";
      if (!regions.has(r)) regions.set(r, []);
      regions.get(r).push(n);
    }
    const keys = [...regions.keys()].sort((a, b) => (a === "") - (b === "") || a.localeCompare(b));
    if (!keys.length) return `<p class="bw-note">No read nodes yet.</p>`;
    return keys.map(r => `<div class="bw-region" data-region="${esc(r)}"><h3>${r ? esc(r) : "<i>no region</i>"}</h3>` +
      regions.get(r).map(n => `<div class="bw-node ${stateClass(n.state)}" data-node="${esc(n.name)}" data-state="${esc(n.state)}"` +
        ` style="border-left-color: ${colour(n.name)}">` +
        `<div class="bw-node-head"><strong>${esc(n.name)}</strong>` +
        ` <span class="bw-badge ${stateClass(n.state)}">${esc(STATES[n.state] || n.state)}</span>` +
        (n.verified === false ? ` <span class="bw-badge bw-state-cut-off" title="${esc(n.verification)}">unverified</span>` : "") +
        `<span class="bw-txid">TXID ${Number(n.txid) || 0}</span></div>` +
        `<div class="bw-detail">${esc(nodeDetail(n))}</div>` + lagChart(n.name) +
        `</div>`).join("") + `</div>`).join("");
  }

  // -- the waterfalls ----------------------------------------------------------
  function niceTop(v) {
    for (let decade = 10; ; decade *= 10) {
      for (const m of [1, 2, 3, 5]) if (v <= decade * m) return decade * m;
    }
  }
  function divisions(top) { return {"2": 4, "3": 3}[String(top)[0]] || 5; }
  function waterfall(p) {
    const committed = Date.parse(p.committed_at);
    const pending = Math.max(0, Date.now() - committed);
    const rows = p.nodes.filter(a => nodes.has(a.name) || a.arrived).map(a => ({...a}))
      .sort((a, b) => (a.ms == null) - (b.ms == null) || (a.ms - b.ms) || a.name.localeCompare(b.name));
    const last = Math.max(1, ...rows.map(a => a.ms == null ? Math.min(pending, 60000) : a.ms));
    const top = niceTop(last);
    const LABEL = 150, W = 720, ROW = 20, PAD = 22, plot = W - LABEL - 70;
    const H = PAD + rows.length * ROW + 6;
    const x = v => LABEL + (Math.min(v, top) / top) * plot;
    let out = `<svg class="bw-waterfall" xmlns="${SVG}" viewBox="0 0 ${W} ${H}" width="100%" role="img"` +
      ` aria-label="public TXID ${p.txid}: arrival on each read node">`;
    const parts = divisions(top);
    for (let i = 0; i <= parts; i++) {
      const v = (top * i) / parts, gx = x(v).toFixed(1);
      out += `<line x1="${gx}" x2="${gx}" y1="${PAD - 6}" y2="${H - 4}" class="bw-grid"/>` +
        `<text x="${gx}" y="${PAD - 10}" class="bw-tick" text-anchor="middle">${i ? ms(v) : "commit"}</text>`;
    }
    rows.forEach((a, i) => {
      const y = PAD + i * ROW, n = nodes.get(a.name), region = n && n.region ? ` · ${n.region}` : "";
      out += `<g class="bw-arrival" data-node="${esc(a.name)}" data-arrived="${a.arrived}" data-ms="${a.ms == null ? "" : a.ms}">` +
        `<text x="${LABEL - 8}" y="${y + 13}" text-anchor="end" class="bw-row-label">${esc(a.name)}${esc(region)}</text>`;
      if (a.arrived) {
        const w = Math.max(2, x(a.ms) - LABEL);
        out += `<rect x="${LABEL}" y="${y + 3}" width="${w.toFixed(1)}" height="${ROW - 7}" rx="2" fill="${colour(a.name)}"/>` +
          `<text x="${(LABEL + w + 6).toFixed(1)}" y="${y + 13}" class="bw-ms">${ms(a.ms)}</text>`;
      } else {
        const w = Math.max(2, x(pending) - LABEL);
        out += `<rect x="${LABEL}" y="${y + 3}" width="${w.toFixed(1)}" height="${ROW - 7}" rx="2" class="bw-pending"/>` +
          `<text x="${(LABEL + w + 6).toFixed(1)}" y="${y + 13}" class="bw-ms bw-wait">not yet (${ms(pending)})</text>`;
      }
      out += `</g>`;
    });
    return out + "</svg>";
  }
  function renderPublishes() {
    const shown = [...publishes.values()].sort((a, b) => b.txid - a.txid).slice(0, SHOWN);
    if (!shown.length) return `<p class="bw-note">No public TXID since the control plane started: publish something, or write to a public table.</p>`;
    return shown.map(p => {
      const arrived = p.nodes.filter(a => a.arrived).length;
      const slowest = Math.max(0, ...p.nodes.filter(a => a.ms != null).map(a => a.ms));
      return `<div class="bw-publish" data-txid="${Number(p.txid)}" data-complete="${p.complete}">` +
        `<div class="bw-publish-head"><strong>TXID ${Number(p.txid)}</strong> <span class="bw-when">${esc(clock(p.committed_at))}</span> ` +
        `<span class="${p.complete ? "bw-ok" : "bw-wait"}">${p.complete ? `on every node in ${ms(slowest)}` : `on ${arrived} of ${p.nodes.length} nodes`}</span>` +
        `<div class="bw-what">${(p.changes || []).map(esc).join("; ") || "&nbsp;"}</div></div>` +
        waterfall(p) + `</div>`;
    }).join("");
  }

  // -- the page ------------------------------------------------------------------
  function render() {
    queued = false;
    const behind = [...nodes.values()].filter(n => n.state !== "live").length;
    root.innerHTML =
      `<p class="bw-conn ${live ? "bw-ok" : "bw-wait"}">${live ? "live" : "reconnecting…"}</p>` +
      `<p class="bw-summary">public.db at TXID <strong class="bw-primary-txid">${primaryTxid}</strong>` +
      (primaryBytes != null ? ` (${bytes(primaryBytes)})` : "") + ` · ${nodes.size} read node${nodes.size === 1 ? "" : "s"}` +
      (behind ? `, <span class="bw-wait">${behind} not live</span>` : nodes.size ? ", all live" : "") + `</p>` +
      `<h2>Read nodes</h2><div class="bw-regions">${renderNodes()}</div>` +
      `<h2>Arrivals</h2><p class="bw-note">Each public TXID from its commit on the primary to its arrival on each read node, newest first.</p>` +
      `<div class="bw-publishes">${renderPublishes()}</div>`;
  }
  function soon() { if (!queued) { queued = true; requestAnimationFrame(render); } }
  function keepLag(name, t, v, state) {
    if (!lag.has(name)) lag.set(name, []);
    const list = lag.get(name);
    list.push([t, v, state]);
    const from = Date.now() - WINDOW_S * 1000;
    while (list.length && list[0][0] < from) list.shift();
  }
  function setNode(n) {
    if (n.left) { nodes.delete(n.name); lag.delete(n.name); } else nodes.set(n.name, n);
  }
  function setPublish(p) {
    publishes.set(p.txid, p);
    primaryTxid = Math.max(primaryTxid, p.txid);
    const old = [...publishes.keys()].sort((a, b) => b - a).slice(200);
    old.forEach(t => publishes.delete(t));
  }

  fetch(root.dataset.state, {credentials: "same-origin", headers: {Accept: "application/json"}})
    .then(r => r.ok ? r.json() : Promise.reject(new Error(r.status)))
    .then(s => {
      primaryTxid = Math.max(primaryTxid, s.primary_txid || 0);
      primaryBytes = s.public_db_bytes;
      state.interval = s.lag_interval_s || 1;
      s.nodes.forEach(n => nodes.has(n.name) || nodes.set(n.name, n));
      s.publishes.forEach(p => publishes.has(p.txid) || setPublish(p));
      for (const [name, samples] of Object.entries(s.lag || {})) {
        lag.set(name, samples.map(x => [Date.parse(x.at), x.lag_ms, x.state]).concat(lag.get(name) || []));
      }
      soon();
    })
    .catch(() => soon());

  const source = new EventSource(root.dataset.events, {withCredentials: true});
  source.onopen = () => { live = true; soon(); };
  source.onerror = () => { live = false; soon(); };
  source.addEventListener("node", e => { setNode(JSON.parse(e.data)); soon(); });
  source.addEventListener("propagation", e => { setPublish(JSON.parse(e.data)); soon(); });
  source.addEventListener("lag", e => {
    const s = JSON.parse(e.data), t = Date.parse(s.at);
    primaryTxid = Math.max(primaryTxid, s.primary_txid || 0);
    for (const n of s.nodes) {
      keepLag(n.name, t, n.lag_ms, n.state);
      const known = nodes.get(n.name);
      if (known) Object.assign(known, {lag_ms: n.lag_ms, behind_txids: n.behind_txids, state: n.state});
    }
    soon();
  });
  // Pending arrivals grow, "for 12 s" counts: redrawn while anything waits.
  setInterval(() => {
    if ([...publishes.values()].some(p => !p.complete) || [...nodes.values()].some(n => n.state !== "live")) soon();
  }, 500);
})();
