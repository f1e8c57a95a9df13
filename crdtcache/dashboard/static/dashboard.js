// crdtcache dashboard: one server-sent-events stream, drawn with plain DOM and SVG.
// Data from the cache (keys, node ids) only ever reaches the page as text nodes.
"use strict";

(() => {
  const WINDOW = 300; // seconds of history drawn
  const ROLLING = 10; // seconds over which hit rates are averaged
  const MAX_FEED = 200; // rows kept in the change feed
  const STALE_AFTER = 5000; // ms without a frame before the badge says so
  const SVG_NS = "http://www.w3.org/2000/svg";

  const token = new URLSearchParams(window.location.search).get("token");
  const query = token ? "?token=" + encodeURIComponent(token) : "";

  const state = { frame: null, history: [], lastChange: 0, lastFrameAt: 0 };

  // ------------------------------------------------------------- helpers
  const $ = (id) => document.getElementById(id);
  const numberFormat = new Intl.NumberFormat("en");

  function setText(id, text) {
    const node = $(id);
    if (node && node.textContent !== text) node.textContent = text;
  }

  function svgEl(tag, attrs, parent) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, String(value));
    if (parent) parent.appendChild(node);
    return node;
  }

  function clear(node) {
    while (node.firstChild) node.removeChild(node.firstChild);
  }

  function fmtCount(n) {
    return n === null || n === undefined ? "\u2013" : numberFormat.format(n);
  }

  function fmtBytes(n) {
    if (n === null || n === undefined) return "\u2013";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) {
      n /= 1024;
      i += 1;
    }
    return (i === 0 ? String(n) : n.toFixed(n < 10 ? 1 : 0)) + " " + units[i];
  }

  function fmtMs(ms) {
    if (ms === null || ms === undefined) return "\u2013";
    if (ms < 1) return ms === 0 ? "0 ms" : "<1 ms";
    if (ms < 1000) return (ms < 10 ? ms.toFixed(1) : Math.round(ms)) + " ms";
    if (ms < 60000) return (ms / 1000).toFixed(1) + " s";
    if (ms < 3600000) return Math.floor(ms / 60000) + "m " + Math.round((ms % 60000) / 1000) + "s";
    return Math.floor(ms / 3600000) + "h " + Math.round((ms % 3600000) / 60000) + "m";
  }

  function fmtPct(rate) {
    return rate === null || rate === undefined ? "\u2013" : (rate * 100).toFixed(1) + "%";
  }

  function fmtClock(seconds) {
    const d = new Date(seconds * 1000);
    return d.toLocaleTimeString([], { hour12: false });
  }

  function shortId(id) {
    if (!id) return "?";
    return id.length > 18 ? id.slice(0, 17) + "\u2026" : id;
  }

  // Largest value of a few "nice" steps at or above max.
  function niceMax(max) {
    if (!(max > 0)) return 1;
    const power = Math.pow(10, Math.floor(Math.log10(max)));
    for (const step of [1, 2, 2.5, 5, 10]) {
      if (step * power >= max) return step * power;
    }
    return 10 * power;
  }

  // ------------------------------------------------------------- charts
  function frameOf(svg, right) {
    const width = Math.max(200, Math.round(svg.clientWidth || 600));
    const height = Math.max(100, Math.round(svg.clientHeight || 170));
    svg.setAttribute("viewBox", "0 0 " + width + " " + height);
    clear(svg);
    const box = { left: 52, right: right ? 60 : 12, top: 8, bottom: 20 };
    box.width = width - box.left - box.right;
    box.height = height - box.top - box.bottom;
    box.totalWidth = width;
    return box;
  }

  function timeAxis(svg, box, now) {
    const step = box.width > 420 ? 60 : 150;
    for (let ago = WINDOW; ago >= 0; ago -= step) {
      const x = box.left + ((WINDOW - ago) / WINDOW) * box.width;
      const label = ago === 0 ? "now" : "-" + ago / 60 + "m";
      const anchor = ago === WINDOW ? "start" : ago === 0 ? "end" : "middle";
      svgEl("text", { x, y: box.top + box.height + 15, class: "axis-text", "text-anchor": anchor }, svg)
        .textContent = label;
    }
    return (t) => box.left + ((t - (now - WINDOW)) / WINDOW) * box.width;
  }

  function valueAxis(svg, box, max, format, side) {
    for (const f of [0, 0.5, 1]) {
      const y = box.top + box.height * (1 - f);
      if (side === "left") {
        svgEl("line", { x1: box.left, x2: box.left + box.width, y1: y, y2: y, class: "grid-line" }, svg);
      }
      const x = side === "left" ? box.left - 6 : box.left + box.width + 6;
      const anchor = side === "left" ? "end" : "start";
      svgEl("text", { x, y: y + 4, class: "axis-text", "text-anchor": anchor }, svg).textContent =
        format(max * f);
    }
    return (v) => box.top + box.height * (1 - Math.min(v, max) / max);
  }

  function seriesPath(svg, points, field, xOf, yOf, cls) {
    let d = "";
    let run = 0;
    for (const p of points) {
      const v = p[field];
      if (v === null || v === undefined) {
        if (run === 1) d += " l0.01 0"; // a lone point: the round cap draws a dot
        run = 0;
        continue;
      }
      const x = xOf(p.time).toFixed(1);
      const y = yOf(v).toFixed(1);
      d += (run === 0 ? " M" : " L") + x + " " + y;
      run += 1;
    }
    if (run === 1) d += " l0.01 0";
    if (d) svgEl("path", { d: d.trim(), class: "series " + cls }, svg);
    return d !== "";
  }

  function lineChart(svg, points, series, opts) {
    const right = series.some((s) => s.axis === "right");
    const box = frameOf(svg, right);
    const now = points.length ? points[points.length - 1].time : Date.now() / 1000;
    const visible = points.filter((p) => p.time >= now - WINDOW);
    const xOf = timeAxis(svg, box, now);
    const maxOf = (axis) => {
      let max = 0;
      for (const s of series) {
        if ((s.axis || "left") !== axis) continue;
        for (const p of visible) if (p[s.field] > max) max = p[s.field];
      }
      return max;
    };
    const leftMax = opts.max || niceMax(maxOf("left"));
    const yLeft = valueAxis(svg, box, leftMax, opts.format, "left");
    const yRight = right ? valueAxis(svg, box, niceMax(maxOf("right")), opts.rightFormat, "right") : null;
    let drawn = false;
    for (const s of series) {
      const yOf = s.axis === "right" ? yRight : yLeft;
      drawn = seriesPath(svg, visible, s.field, xOf, yOf, s.cls) || drawn;
    }
    if (!drawn) {
      svgEl("text", { x: box.left + box.width / 2, y: box.top + box.height / 2, class: "empty-text", "text-anchor": "middle" }, svg)
        .textContent = opts.empty || "no data yet";
    }
  }

  function evictionChart(svg, points) {
    const box = frameOf(svg, false);
    const now = points.length ? points[points.length - 1].time : Date.now() / 1000;
    const visible = points.filter((p) => p.time >= now - WINDOW);
    const xOf = timeAxis(svg, box, now);
    const reasons = ["ttl", "size", "memory", "explicit"];
    let max = 0;
    for (const p of visible) {
      const total = reasons.reduce((sum, r) => sum + (p["evict_" + r] || 0), 0);
      if (total > max) max = total;
    }
    const top = niceMax(max);
    const yOf = valueAxis(svg, box, top, (v) => fmtCount(Math.round(v)), "left");
    const barWidth = Math.max(1.5, box.width / WINDOW - 0.5);
    for (const p of visible) {
      let base = 0;
      for (const r of reasons) {
        const n = p["evict_" + r] || 0;
        if (!n) continue;
        const y0 = yOf(base);
        const y1 = yOf(base + n);
        svgEl("rect", { x: (xOf(p.time) - barWidth).toFixed(1), y: y1.toFixed(1), width: barWidth.toFixed(1), height: Math.max(0.5, y0 - y1).toFixed(1), class: "s-" + r }, svg);
        base += n;
      }
    }
    if (max === 0) {
      svgEl("text", { x: box.left + box.width / 2, y: box.top + box.height / 2, class: "empty-text", "text-anchor": "middle" }, svg)
        .textContent = "no evictions in the last 5 minutes";
    }
  }

  // Hit rates over the last ROLLING seconds (weighted by lookups): per-second rates
  // swing from 0 to 100% when a node serves a few lookups a second.
  function rollingHitRates(points) {
    const out = [];
    let start = 0;
    const sums = { lh: 0, ll: 0, dh: 0, dl: 0 };
    const add = (p, sign) => {
      sums.lh += sign * (p.local_hits || 0);
      sums.ll += sign * (p.lookups || 0);
      sums.dh += sign * (p.distributed_hits || 0);
      sums.dl += sign * (p.distributed_lookups || 0);
    };
    for (const p of points) {
      add(p, 1);
      while (points[start].time <= p.time - ROLLING) add(points[start++], -1);
      out.push({
        time: p.time,
        hit_local: sums.ll > 0 ? sums.lh / sums.ll : null,
        hit_distributed: sums.dl > 0 ? sums.dh / sums.dl : null,
        hit_overall: sums.ll > 0 ? (sums.lh + sums.dh) / sums.ll : null,
      });
    }
    return out;
  }

  function drawCharts() {
    const points = state.history;
    const rates = rollingHitRates(points);
    const latest = rates.length ? rates[rates.length - 1].hit_overall : null;
    setText("stat-hit", fmtPct(latest));
    lineChart($("chart-hits"), rates, [
      { field: "hit_local", cls: "s-local" },
      { field: "hit_distributed", cls: "s-dist" },
      { field: "hit_overall", cls: "s-overall" },
    ], { max: 1, format: (v) => Math.round(v * 100) + "%", empty: "no lookups yet" });
    lineChart($("chart-sync"), points, [
      { field: "sync_p50", cls: "s-p50" },
      { field: "sync_p99", cls: "s-p99" },
    ], { format: (v) => fmtMs(v), empty: "no changes from peers yet" });
    lineChart($("chart-keys"), points, [
      { field: "keys", cls: "s-keys" },
      { field: "held", cls: "s-held" },
      { field: "memory", cls: "s-memory", axis: "right" },
    ], { format: (v) => fmtCount(Math.round(v)), rightFormat: (v) => fmtBytes(Math.round(v)) });
    evictionChart($("chart-evictions"), points);
  }

  // ------------------------------------------------------------- cluster
  function drawCluster(frame) {
    const svg = $("cluster");
    const width = Math.max(220, Math.round(svg.clientWidth || 400));
    const height = Math.max(160, Math.round(svg.clientHeight || 240));
    svg.setAttribute("viewBox", "0 0 " + width + " " + height);
    clear(svg);
    const cx = width / 2;
    const cy = height / 2;
    const peers = frame.peers;
    const rx = Math.max(40, Math.min(width / 2 - 80, 2.2 * (height / 2 - 50)));
    const ry = Math.max(30, height / 2 - 50);
    const spots = peers.map((peer, i) => {
      // Offset by half a step, so that no label sits on a link (two peers: left, right).
      const step = (2 * Math.PI) / Math.max(1, peers.length);
      const angle = -Math.PI / 2 + step / 2 + step * i;
      return { peer, x: cx + rx * Math.cos(angle), y: cy + ry * Math.sin(angle) };
    });
    for (const s of spots) {
      svgEl("line", { x1: cx, y1: cy, x2: s.x, y2: s.y, class: "link " + s.peer.state, "data-link": s.peer.id }, svg);
    }
    const node = (x, y, id, cls, label, sub) => {
      const g = svgEl("g", { class: "node " + cls, "data-node": id, "data-state": cls }, svg);
      svgEl("title", {}, g).textContent = id;
      svgEl("circle", { cx: x, cy: y, r: cls === "self" ? 16 : 13 }, g);
      svgEl("text", { x, y: y + (cls === "self" ? 31 : 27) }, g).textContent = label;
      svgEl("text", { x, y: y + (cls === "self" ? 43 : 39), class: "state" }, g).textContent = sub;
    };
    for (const s of spots) node(s.x, s.y, s.peer.id, s.peer.state, shortId(s.peer.id), s.peer.state);
    node(cx, cy, frame.node.id, "self", shortId(frame.node.id), "this node");
    if (!peers.length) {
      svgEl("text", { x: cx, y: cy - 28, class: "empty-text", "text-anchor": "middle" }, svg).textContent =
        "no peers";
    }
  }

  // ------------------------------------------------------------- tables
  function peerRow(cells, id, rowState) {
    const tr = document.createElement("tr");
    tr.dataset.peerId = id;
    tr.dataset.state = rowState;
    for (const [text, cls, badge] of cells) {
      const td = document.createElement("td");
      if (cls) td.className = cls;
      if (badge) {
        const span = document.createElement("span");
        span.className = "badge " + badge;
        span.textContent = text;
        td.appendChild(span);
      } else {
        td.textContent = text;
      }
      tr.appendChild(td);
    }
    return tr;
  }

  function drawPeers(frame) {
    const body = $("peers").tBodies[0];
    const rows = [peerRow([
      [frame.node.id, "mono"], ["self", "", "self"], [frame.node.address || "in-process", "mono"],
      ["\u2013", "num"], ["\u2013", "num"], ["\u2013", "num"],
    ], frame.node.id, "self")];
    for (const p of frame.peers) {
      rows.push(peerRow([
        [p.id, "mono"],
        [p.state + (p.linked ? "" : " (no link)"), "", p.state],
        [p.address || "\u2013", "mono"],
        [fmtMs(p.last_heard_ms), "num"],
        [p.behind_ms === null ? "syncing" : fmtMs(p.behind_ms), "num"],
        [p.last_write_ms === null ? "\u2013" : fmtMs(p.last_write_ms), "num"],
      ], p.id, p.state));
    }
    body.replaceChildren(...rows);
  }

  // ------------------------------------------------------------- feed
  function feedRow(change, self) {
    const li = document.createElement("li");
    li.dataset.seq = String(change.seq);
    li.dataset.op = change.op;
    if (change.key !== null) li.dataset.key = change.key;
    const time = document.createElement("span");
    time.className = "time";
    time.textContent = fmtClock(change.time);
    const op = document.createElement("span");
    op.className = "op op-" + change.op;
    op.textContent = change.op.replace("_", " ");
    const key = document.createElement("span");
    key.className = "key";
    if (change.op === "peer_up" || change.op === "peer_down") {
      key.textContent = change.origin || "";
    } else {
      key.textContent = change.key !== null ? change.key : "";
      if (change.pattern) key.textContent += "  (pattern " + change.pattern + ")";
    }
    key.title = key.textContent;
    const origin = document.createElement("span");
    origin.className = "origin";
    const isPeerEvent = change.op === "peer_up" || change.op === "peer_down";
    origin.textContent = isPeerEvent ? "" : change.remote ? "from " + shortId(change.origin) : "local";
    origin.title = change.origin || "";
    li.append(time, op, key, origin);
    return li;
  }

  function addChanges(changes, self, animate) {
    const list = $("feed");
    const fresh = changes.filter((c) => c.seq > state.lastChange);
    if (!fresh.length) return;
    const fragment = document.createDocumentFragment();
    for (let i = fresh.length - 1; i >= 0; i -= 1) {
      const li = feedRow(fresh[i], self);
      if (animate) li.classList.add("new");
      fragment.appendChild(li);
    }
    list.insertBefore(fragment, list.firstChild);
    while (list.children.length > MAX_FEED) list.removeChild(list.lastChild);
    state.lastChange = fresh[fresh.length - 1].seq;
  }

  // ------------------------------------------------------------- frames
  function drawFrame(frame) {
    state.frame = frame;
    state.lastFrameAt = Date.now();
    const node = frame.node;
    setText("node-id", node.id);
    setText("node-meta", [node.backend, node.strategy, node.cluster !== "default" ? "cluster " + node.cluster : ""]
      .filter(Boolean).join(" \u00b7 "));
    document.title = "crdtcache \u2013 " + node.id;
    const health = frame.health;
    const badge = $("health");
    badge.textContent = "health " + health.score;
    badge.className = "badge " + (health.score >= 90 ? "good" : health.healthy ? "warn" : "bad");
    const reasons = $("health-reasons");
    reasons.hidden = health.reasons.length === 0;
    reasons.textContent = health.reasons.join(" \u00b7 ");

    const point = frame.point;
    setText("stat-instances", fmtCount(frame.instances));
    setText("stat-keys", fmtCount(frame.keys));
    setText("stat-held", fmtCount(frame.held) + " held here" + (frame.max_size ? " of " + fmtCount(frame.max_size) : ""));
    setText("stat-memory", fmtBytes(frame.memory));
    setText("stat-memory-max", frame.max_memory ? "of " + fmtBytes(frame.max_memory) : "no memory bound");
    setText("stat-hit-total", fmtPct(frame.hit_rate_total) + " since start");
    const { p50, p99 } = frame.sync_ms;
    const bothMs = p50 !== null && p99 !== null && p50 >= 1 && p99 < 1000;
    setText("stat-sync", bothMs ? fmtMs(p50).replace(" ms", "") + " / " + fmtMs(p99) : fmtMs(p50) + " / " + fmtMs(p99));
    setText("stat-sync-samples", fmtCount(frame.sync_ms.samples) + " samples");
    setText("stat-traffic", fmtBytes(point.bytes_sent + point.bytes_received) + "/s");
    setText("stat-traffic-total", fmtBytes(frame.traffic.bytes_sent) + " out \u00b7 " + fmtBytes(frame.traffic.bytes_received) + " in");

    drawCluster(frame);
    drawPeers(frame);
    if (frame.changes_skipped > 0) {
      setText("feed-skipped", "(" + fmtCount(frame.changes_skipped) + " more in the last second, not shown)");
    } else {
      setText("feed-skipped", "");
    }
  }

  function addPoint(point) {
    const history = state.history;
    if (history.length && history[history.length - 1].time >= point.time) return;
    history.push(point);
    const oldest = point.time - WINDOW - 5;
    while (history.length && history[0].time < oldest) history.shift();
  }

  function onHello(data) {
    state.history = data.history.slice();
    state.lastChange = 0;
    clear($("feed"));
    const self = data.latest ? data.latest.node.id : null;
    addChanges(data.feed, self, false);
    if (data.latest) drawFrame(data.latest);
    drawCharts();
  }

  function onSample(frame) {
    setLink("live", "live");
    addPoint(frame.point);
    addChanges(frame.changes, frame.node.id, true);
    drawFrame(frame);
    drawCharts();
  }

  function setLink(text, cls) {
    const link = $("link");
    link.textContent = text;
    link.className = "badge " + cls;
  }

  function connect() {
    const source = new EventSource("events" + query);
    source.addEventListener("hello", (e) => onHello(JSON.parse(e.data)));
    source.addEventListener("sample", (e) => onSample(JSON.parse(e.data)));
    source.addEventListener("open", () => setLink("live", "live"));
    source.addEventListener("error", () => setLink("reconnecting", "off"));
  }

  function start() {
    for (const id of ["link-stats", "link-metrics"]) {
      const a = $(id);
      if (a && query) a.href = a.getAttribute("href") + query;
    }
    connect();
    setInterval(() => {
      if (state.lastFrameAt && Date.now() - state.lastFrameAt > STALE_AFTER && $("link").textContent === "live") {
        setLink("stale", "warn");
      }
    }, 1000);
    let pending = false;
    window.addEventListener("resize", () => {
      if (pending) return;
      pending = true;
      window.requestAnimationFrame(() => {
        pending = false;
        if (state.frame) drawCluster(state.frame);
        drawCharts();
      });
    });
  }

  start();
})();
