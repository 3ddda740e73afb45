// The Matrix live board. Plain script, no dependencies, no build step.
// Every name and every byte of content is untrusted text: it is only ever set with textContent
// (or drawn on the canvas), never parsed as HTML.
"use strict";
(function () {
  const API = "/api/v1";
  const meta = (name) => {
    const m = document.querySelector('meta[name="' + name + '"]');
    return m ? m.getAttribute("content") : null;
  };
  const PAGE = meta("matrix-page");
  const RUN = meta("matrix-run");
  const CSRF = meta("csrf-token");
  const CAN_PLAN = meta("matrix-can-plan") === "1";
  const $ = (id) => document.getElementById(id);
  const enc = encodeURIComponent;

  function el(tag, text, cls) {
    const e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = String(text);
    if (cls) e.className = cls;
    return e;
  }
  function row(cells) {
    const tr = document.createElement("tr");
    for (const c of cells) tr.appendChild(c instanceof Node ? wrapTd(c) : el("td", c));
    return tr;
  }
  // Rows of plain values: cells whose text changed are updated in place (a 200-package table every
  // second would otherwise be rebuilt, and laid out, whole).
  function fillTable(body, values) {
    if (body.rows.length !== values.length) {
      body.replaceChildren(...values.map((v) => row(v)));
      return;
    }
    for (let i = 0; i < values.length; i++) {
      const cells = body.rows[i].cells;
      for (let j = 0; j < values[i].length; j++) {
        const text = String(values[i][j]);
        if (cells[j].textContent !== text) cells[j].textContent = text;
      }
    }
  }
  function wrapTd(node) {
    const td = document.createElement("td");
    td.appendChild(node);
    return td;
  }
  function fmt(n, digits) {
    if (n === null || n === undefined) return "–";
    return typeof n === "number" ? n.toFixed(digits === undefined ? 0 : digits) : String(n);
  }
  // A list of names as one line ("–", or `none`, when there are none).
  function listText(names, none) {
    if (!names || !names.length) return none === undefined ? "–" : none;
    return names.join(", ");
  }
  function eta(seconds) {
    if (seconds === null || seconds === undefined) return "–";
    if (seconds < 90) return Math.round(seconds) + " s";
    if (seconds < 5400) return Math.round(seconds / 60) + " min";
    return (seconds / 3600).toFixed(1) + " h";
  }
  // An ETA only while something is generating: with nothing leased (paused, backing off, no worker
  // about) the rate of the last minutes says nothing about when the rest will finish.
  function etaOf(s) {
    return s && s.counts && s.counts.generating > 0 ? eta(s.eta_seconds) : "–";
  }

  // The progress bar: the complete, failed and cancelled shares side by side (green, red, grey), with
  // the numbers in its title and accessible name.
  function progressBar(bar) {
    const b = bar || el("div", null, "progress");
    if (!b.querySelector(".bar")) {
      b.replaceChildren(el("div", null, "bar complete"), el("div", null, "bar failed"), el("div", null, "bar cancelled"));
      b.setAttribute("role", "img");
    }
    return b;
  }
  function setProgress(bar, c) {
    const share = (n) => (c.total ? (n / c.total) * 100 : 0);
    for (const part of ["complete", "failed", "cancelled"]) {
      bar.querySelector(".bar." + part).style.width = share(c[part]).toFixed(2) + "%";
    }
    const finished = c.complete + c.failed + c.cancelled;
    const text =
      share(finished).toFixed(1) + "% finished: " + c.complete + " complete, " + c.failed + " failed, " +
      c.cancelled + " cancelled of " + c.total + " items";
    bar.title = text;
    bar.setAttribute("aria-label", text);
  }

  function setLive(on, text) {
    const live = $("live");
    if (!live) return;
    live.textContent = text || (on ? "● live" : "○ reconnecting");
    live.classList.toggle("on", !!on);
  }

  async function api(path, options) {
    const opts = options || {};
    const headers = { Accept: "application/json" };
    let body;
    if (opts.body !== undefined) {
      headers["Content-Type"] = "application/json";
      headers["X-CSRF-Token"] = CSRF;
      body = JSON.stringify(opts.body);
    }
    const r = await fetch(path.startsWith("/ui/") ? path : API + path, {
      method: opts.method || "GET",
      headers: headers,
      body: body,
      credentials: "same-origin",
      cache: "no-store",
    });
    if (r.status === 401) {
      location.assign("/ui/signin");
      throw new Error("signed out");
    }
    const data = await r.json().catch(() => ({}));
    if (!r.ok) throw new Error(data.error_description || "HTTP " + r.status);
    return data;
  }

  // Batches calls: fn runs at most once per `ms`, after the last request in a burst.
  function debounce(fn, ms) {
    let timer = null;
    let running = false;
    let again = false;
    const run = async () => {
      timer = null;
      if (running) {
        again = true;
        return;
      }
      running = true;
      try {
        await fn();
      } catch (e) {
        console.warn(e);
      } finally {
        running = false;
        if (again) {
          again = false;
          schedule();
        }
      }
    };
    const schedule = () => {
      if (timer === null) timer = setTimeout(run, ms);
    };
    return schedule;
  }

  // Follows an event stream; reconnects by itself from the last event seen. onEvents gets batches.
  function follow(url, since, onEvents) {
    let last = since;
    let pending = [];
    let flushing = false;
    let source = null;
    const flush = () => {
      flushing = false;
      const batch = pending;
      pending = [];
      onEvents(batch);
    };
    const open = () => {
      const sep = url.indexOf("?") >= 0 ? "&" : "?";
      source = new EventSource(url + (last === null ? "" : sep + "since=" + last));
      source.onopen = () => setLive(true);
      source.onmessage = (m) => {
        let event;
        try {
          event = JSON.parse(m.data);
        } catch (e) {
          return;
        }
        last = event.seq;
        pending.push(event);
        if (!flushing) {
          flushing = true;
          setTimeout(flush, 100); // debounce: one repaint for a burst of events
        }
      };
      source.onerror = () => {
        setLive(false);
        if (source.readyState === EventSource.CLOSED) {
          source.close();
          setTimeout(open, 2000);
        }
      };
    };
    open();
  }

  // ---- the runs list ------------------------------------------------------------------------------

  async function runsPage() {
    const body = document.querySelector("#runs tbody");
    const refresh = async () => {
      const list = await api("/runs");
      const statuses = await Promise.all(
        list.runs.slice(0, 50).map((r) => api("/runs/" + enc(r.name)).catch(() => null)),
      );
      const rows = list.runs.map((r, i) => {
        const s = statuses[i];
        const link = el("a", r.name);
        link.href = "/ui/runs/" + enc(r.name);
        const c = r.counts;
        const bar = progressBar();
        setProgress(bar, c);
        return row([
          link,
          r.paused_reason ? r.state + " — " + r.paused_reason : r.state,
          bar,
          c.pending,
          c.blocked || 0,
          c.generating,
          c.in_review || 0,
          c.complete,
          c.failed,
          c.cancelled,
          s ? fmt(s.throughput_per_minute, 1) : "–",
          etaOf(s),
          s && s.usage ? money(s.usage.cost_usd || 0) : "–",
        ]);
      });
      body.replaceChildren(...rows);
      $("empty").hidden = list.runs.length > 0;
    };
    await refresh();
    const later = debounce(refresh, 500);
    follow(API + "/events", null, later);
  }

  // ---- a run --------------------------------------------------------------------------------------

  // by status code (the index into the grid's `statuses`): pending, generating, complete, failed,
  // cancelled, blocked
  const COLORS = ["#e5e7eb", "#3b82f6", "#16a34a", "#dc2626", "#6b7280", "#ddd6fe", "#bbf7d0"];
  const INK = ["#6b7280", "#1e3a8a", "#14532d", "#ffffff", "#ffffff", "#5b21b6", "#14532d"];
  const grid = { statuses: [], rows: [], index: new Map(), cols: 0, size: 8, gutter: 0, header: 0, labels: [], dirty: [], frame: 0 };
  const HEADER_MAX = 120; // the tallest column-header band, in CSS pixels
  const selected = new Set();
  // finished items per minute, from the store's per-minute counts; keyed by minute since the epoch
  const chart = { minutes: new Map(), now: null, first: null };

  function drawCell(ctx, r, c) {
    const S = grid.size;
    const code = grid.rows[r].status[c];
    const x = grid.gutter + c * S;
    const y = grid.header + r * S;
    const s = S > 5 ? S - 1 : S; // a 1-pixel gap between cells when there is room
    ctx.clearRect(x, y, S, S);
    ctx.fillStyle = COLORS[code];
    ctx.strokeStyle = INK[code];
    ctx.lineWidth = S >= 12 ? 2 : 1;
    if (code === 0) {
      // pending: an outline
      ctx.fillRect(x, y, s, s);
      ctx.strokeRect(x + 0.5, y + 0.5, s - 1, s - 1);
    } else if (code === 1) {
      // generating: lower-right half filled
      ctx.fillStyle = COLORS[0];
      ctx.fillRect(x, y, s, s);
      ctx.fillStyle = COLORS[1];
      ctx.beginPath();
      ctx.moveTo(x + s, y);
      ctx.lineTo(x + s, y + s);
      ctx.lineTo(x, y + s);
      ctx.closePath();
      ctx.fill();
    } else if (code === 2) {
      // complete: solid
      ctx.fillRect(x, y, s, s);
    } else if (code === 5) {
      // blocked (waiting for dependencies): an outline with a bar across the middle
      ctx.fillRect(x, y, s, s);
      ctx.strokeRect(x + 0.5, y + 0.5, s - 1, s - 1);
      const bar = Math.max(1, Math.round(s / 5));
      ctx.fillStyle = INK[5];
      ctx.fillRect(x + 1, y + Math.floor((s - bar) / 2), Math.max(1, s - 2), bar);
    } else if (code === 6) {
      // in review (done, awaiting a reviewer): a light fill with a dot in the middle
      ctx.fillRect(x, y, s, s);
      const dot = Math.max(1, Math.round(s / 3));
      ctx.fillStyle = INK[6];
      ctx.fillRect(x + Math.floor((s - dot) / 2), y + Math.floor((s - dot) / 2), dot, dot);
    } else {
      // failed: a cross; cancelled: one slash
      ctx.fillRect(x, y, s, s);
      ctx.beginPath();
      ctx.moveTo(x + 1, y + s - 1);
      ctx.lineTo(x + s - 1, y + 1);
      if (code === 3) {
        ctx.moveTo(x + 1, y + 1);
        ctx.lineTo(x + s - 1, y + s - 1);
      }
      ctx.stroke();
    }
    if (selected.has(grid.rows[r].ids[c])) {
      ctx.strokeStyle = "#f59e0b";
      ctx.lineWidth = 2;
      ctx.strokeRect(x + 1, y + 1, s - 2, s - 2);
    }
  }

  // The item name a column's header shows: the one every package has in that column ("" when packages
  // name it differently: the tooltip still names each cell).
  function columnNames() {
    const names = [];
    for (let c = 0; c < grid.cols; c++) {
      let name = null;
      for (const p of grid.rows) {
        if (c >= p.items.length) continue;
        if (name === null) name = p.items[c];
        else if (p.items[c] !== name) {
          name = "";
          break;
        }
      }
      names.push(name || "");
    }
    return names;
  }

  // The text cut (with "…") to fit `width` pixels; a long name is cut to 200 characters first, so a
  // hostile one costs no more measuring than a short one.
  function fitText(ctx, text, width) {
    let name = text.length > 200 ? text.slice(0, 200) + "…" : text;
    while (name.length > 1 && ctx.measureText(name).width > width) name = name.slice(0, -2) + "…";
    return name;
  }

  function paintAll() {
    const canvas = $("grid");
    const box = $("grid-box");
    const cols = Math.max(1, grid.cols);
    // package names in a left gutter when rows are tall enough to read them
    grid.gutter = Math.floor((box.clientWidth - 4) / cols) >= 14 ? 160 : 0;
    grid.size = Math.max(4, Math.min(28, Math.floor((box.clientWidth - 4 - grid.gutter) / cols)));
    if (grid.size < 12) grid.gutter = 0;
    const ctx = canvas.getContext("2d");
    const font = Math.min(13, grid.size - 3) + "px system-ui, sans-serif";
    // item names as column headers (drawn upwards) when columns are as wide as a labelled row is tall
    grid.labels = [];
    grid.header = 0;
    if (grid.size >= 12) {
      ctx.font = font;
      const names = columnNames();
      let widest = 0;
      for (const n of names) if (n) widest = Math.max(widest, ctx.measureText(n).width);
      if (widest > 0) {
        grid.header = Math.min(HEADER_MAX, Math.ceil(widest) + 8);
        grid.labels = names.map((n) => (n ? fitText(ctx, n, grid.header - 8) : ""));
      }
    }
    const ratio = window.devicePixelRatio || 1;
    const w = grid.gutter + cols * grid.size;
    const h = grid.header + Math.max(1, grid.rows.length) * grid.size;
    canvas.width = Math.round(w * ratio);
    canvas.height = Math.round(h * ratio);
    canvas.style.width = w + "px";
    canvas.style.height = h + "px";
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    if (grid.gutter || grid.header) {
      // names are drawn as pixels: never markup
      ctx.font = font;
      ctx.textBaseline = "middle";
      ctx.fillStyle = "#111827";
      for (let r = 0; grid.gutter && r < grid.rows.length; r++) {
        ctx.fillText(fitText(ctx, grid.rows[r].name, grid.gutter - 8), 2, grid.header + r * grid.size + grid.size / 2);
      }
      for (let c = 0; c < grid.labels.length; c++) {
        if (!grid.labels[c]) continue;
        ctx.save();
        ctx.translate(grid.gutter + c * grid.size + grid.size / 2, grid.header - 4);
        ctx.rotate(-Math.PI / 2);
        ctx.fillText(grid.labels[c], 0, 0);
        ctx.restore();
      }
    }
    grid.dirty = [];
    // rows in slices of ~25 ms per frame: a 40,000-cell grid never blocks the page for long
    const epoch = (grid.epoch = (grid.epoch || 0) + 1);
    let r = 0;
    const slice = () => {
      if (epoch !== grid.epoch) return; // a newer full paint took over
      const started = performance.now();
      while (r < grid.rows.length && performance.now() - started < 25) {
        const n = grid.rows[r].status.length;
        for (let c = 0; c < n; c++) drawCell(ctx, r, c);
        r++;
      }
      if (r < grid.rows.length) requestAnimationFrame(slice);
      else document.body.dataset.gridPainted = String(Date.now());
    };
    slice();
  }

  function paintDirty() {
    grid.frame = 0;
    const ctx = $("grid").getContext("2d");
    const dirty = grid.dirty;
    grid.dirty = [];
    for (const [r, c] of dirty) drawCell(ctx, r, c);
    document.body.dataset.gridPainted = String(Date.now());
    const trace = window.matrixTrace; // a Map a bench installs: outcome id -> when its cell was repainted
    if (trace instanceof Map) {
      const now = performance.timeOrigin + performance.now();
      for (const [r, c] of dirty) trace.set(grid.rows[r].ids[c], now);
    }
  }

  // Whether any cell has this status code.
  function hasCode(code) {
    return code >= 0 && grid.rows.some((r) => r.status.includes(code));
  }

  function setCell(id, status) {
    const at = grid.index.get(id);
    const code = grid.statuses.indexOf(status);
    if (!at || code < 0) return false;
    const [r, c] = at;
    if (grid.rows[r].status[c] !== code) {
      grid.rows[r].status[c] = code;
      grid.dirty.push(at);
    }
    return true;
  }

  async function loadGrid() {
    const data = await api("/ui/runs/" + enc(RUN) + "/grid");
    grid.statuses = data.statuses;
    grid.index = new Map();
    grid.cols = 0;
    grid.rows = data.packages.map((p, r) => {
      const status = new Uint8Array(p.status.length);
      for (let c = 0; c < p.status.length; c++) {
        status[c] = p.status.charCodeAt(c) - 48;
        grid.index.set(p.ids[c], [r, c]);
      }
      grid.cols = Math.max(grid.cols, p.ids.length);
      return { name: p.name, ids: p.ids, items: p.items, status: status };
    });
    paintAll();
    return data.latest_seq;
  }

  // What an event says about one cell's status; null when the event needs the grid reloaded.
  function cellChange(e) {
    const d = e.data || {};
    switch (e.kind) {
      case "claimed":
        return "generating";
      case "completed":
        return "complete";
      case "retry_scheduled":
      case "ready": // its last dependency completed
        return "pending";
      case "failed":
      case "cancelled":
        return e.kind;
      case "lease_expired":
      case "rejected": // pending for a new attempt, or failed
        return d.now || null;
      case "in_review":
        return "in_review";
      case "approved":
        return "complete";
      case "status_updated":
        return d.to || null;
      default:
        return null;
    }
  }

  // the run's package summaries by name, as the last status read gave them (for the item detail)
  let packageInfo = new Map();

  // The events that move many cells at once, and where they move them to.
  const BULK = { requeued: "pending", dependents_cancelled: "cancelled" };

  function cellAt(ev) {
    const rect = $("grid").getBoundingClientRect();
    const c = Math.floor((ev.clientX - rect.left - grid.gutter) / grid.size);
    const r = Math.floor((ev.clientY - rect.top - grid.header) / grid.size);
    if (r < 0 || r >= grid.rows.length || c < 0 || c >= grid.rows[r].ids.length) return null;
    return [r, c];
  }

  // What the end time marks: the item's own ending, not always a completion.
  const ENDED = { complete: "completed", failed: "failed", cancelled: "cancelled" };
  // "2 of 3", or, for an item that failed for good with attempts left, that it was not retried: a
  // failure reported as not retryable (or an override) ends an item at once. The record does not keep
  // which of the two it was, so the text says only what it knows.
  function attemptsText(o) {
    if (o.status === "failed" && o.attempts < o.max_attempts) {
      return "failed for good after " + o.attempts + " of up to " + o.max_attempts + " attempts";
    }
    return o.attempts + " of " + o.max_attempts;
  }

  // An attempt's usage in a few words: tokens by kind, the model, the cost.
  function usageText(u) {
    if (!u) return "";
    const parts = [];
    const kinds = [["input_tokens", "in"], ["output_tokens", "out"], ["cache_read_tokens", "cache read"], ["cache_creation_tokens", "cache write"]];
    for (const [k, label] of kinds) if (u[k] !== undefined && u[k] !== null) parts.push(fmt(u[k]) + " " + label);
    if (u.model) parts.push(u.model);
    if (u.cost_usd !== undefined && u.cost_usd !== null) parts.push(money(u.cost_usd));
    return parts.join(" · ");
  }
  function money(usd) {
    return "$" + (usd >= 100 ? usd.toFixed(0) : usd >= 1 ? usd.toFixed(2) : usd.toFixed(4));
  }
  function reviewText(a) {
    if (!a.review_decision) return "";
    return [a.review_decision === "approve" ? "approved" : "rejected", a.review_note, a.reviewed_by ? "by " + a.reviewed_by : null]
      .filter((x) => x)
      .join(" · ");
  }

  // Approve / Reject for an item in review (callers with matrix:plan): review_item over REST.
  function showReview(o) {
    const box = $("d-review");
    if (!box) return;
    box.hidden = !(CAN_PLAN && o.status === "in_review");
    $("d-review-result").textContent = "";
    $("d-review-note").value = "";
    box.dataset.outcome = o.id;
  }
  async function review(decision) {
    const box = $("d-review");
    const id = box.dataset.outcome;
    const note = $("d-review-note").value.trim();
    const out = $("d-review-result");
    try {
      const r = await api("/outcomes/" + enc(id) + "/review", { method: "POST", body: note ? { decision: decision, note: note } : { decision: decision } });
      const said = (decision === "approve" ? "approved: " : "rejected: ") + r.status;
      await showDetail(id); // the item as it is now (its review box hidden once decided)
      out.textContent = said;
    } catch (e) {
      out.textContent = e.message;
    }
  }

  async function showDetail(id) {
    const o = await api("/outcomes/" + enc(id));
    $("detail").hidden = false;
    showReview(o);
    $("d-title").textContent = o.package + " / " + o.item;
    const fields = [
      ["status", o.status],
      ["waits for", listText(o.waits_for, null)],
      ["package after", listText((packageInfo.get(o.package) || {}).after, null)],
      ["priority", o.priority === undefined ? null : o.priority],
      ["locks", listText(o.locks, null)],
      ["locks held", listText(o.locks_held, null)],
      ["attempts", attemptsText(o)],
      ["worker", o.worker],
      ["created", o.created_at],
      ["started", o.started_at],
      [ENDED[o.status] || "ended", o.completed_at],
      ["duration", o.duration_seconds === undefined ? null : fmt(o.duration_seconds, 2) + " s"],
      ["error", o.error_message],
      ["path", o.outcome_path],
      ["content", o.content_bytes === undefined ? null : o.content_bytes + " bytes, " + (o.mime_type || "")],
      ["id", o.id],
    ];
    const dl = $("d-fields");
    dl.replaceChildren();
    for (const [k, v] of fields) {
      if (v === undefined || v === null) continue;
      dl.appendChild(el("dt", k));
      dl.appendChild(el("dd", v));
    }
    $("d-attempts").replaceChildren(
      ...(o.history || []).map((a) =>
        row([
          a.attempt,
          a.worker || "–",
          a.status,
          a.started_at || "–",
          a.ended_at || "–",
          a.error || "",
          a.note || "",
          usageText(a.usage),
          reviewText(a),
        ]),
      ),
    );
    $("d-metrics").textContent = JSON.stringify(o.metrics || {}, null, 2);
    const preview = $("d-content");
    preview.textContent = "";
    if (!o.content_sha256) {
      preview.textContent = "(no content)";
      return;
    }
    const r = await fetch(API + "/outcomes/" + enc(id) + "/content", { credentials: "same-origin" });
    if (!r.ok || !r.body) {
      preview.textContent = "(content unavailable)";
      return;
    }
    const mime = r.headers.get("content-type") || "";
    const textual = /^text\/|json|xml|yaml|javascript/.test(mime);
    if (!textual) {
      preview.textContent = "(" + mime + ", " + o.content_bytes + " bytes: not shown)";
      r.body.cancel();
      return;
    }
    const reader = r.body.getReader();
    const chunks = [];
    let size = 0;
    while (size < 65536) {
      const { done, value } = await reader.read();
      if (done) break;
      chunks.push(value);
      size += value.length;
    }
    reader.cancel();
    const bytes = new Uint8Array(Math.min(size, 65536));
    let at = 0;
    for (const ch of chunks) {
      const take = Math.min(ch.length, bytes.length - at);
      bytes.set(ch.subarray(0, take), at);
      at += take;
    }
    const text = new TextDecoder("utf-8", { fatal: false }).decode(bytes);
    preview.textContent = text + (o.content_bytes > 65536 ? "\n… (first 64 KiB of " + o.content_bytes + " bytes)" : "");
  }

  // The chart's history and its live extension are the same read: the store's per-minute counts,
  // fetched whole on opening and then from the minute before the last one seen (a finish may be
  // committed just after its minute ends).
  async function loadThroughput() {
    const since = chart.now === null ? "" : "?since=" + (chart.now - 1);
    const data = await api("/ui/runs/" + enc(RUN) + "/throughput" + since);
    for (const [minute, completed, failed] of data.minutes) chart.minutes.set(minute, completed + failed);
    chart.now = data.now_minute;
    if (chart.first === null) chart.first = data.since_minute;
    drawChart();
  }

  function chartPoints() {
    const pts = [];
    if (chart.now === null) return pts;
    const from = Math.max(chart.first, chart.now - 59);
    for (let m = from; m <= chart.now; m++) pts.push({ minute: m, v: chart.minutes.get(m) || 0 });
    return pts;
  }

  function drawChart() {
    const svg = $("chart");
    const NS = "http://www.w3.org/2000/svg";
    svg.replaceChildren();
    const pts = chartPoints();
    const max = Math.max(1, ...pts.map((p) => p.v));
    const text = (x, y, value) => {
      const t = document.createElementNS(NS, "text");
      t.setAttribute("x", String(x));
      t.setAttribute("y", String(y));
      t.textContent = value;
      svg.appendChild(t);
    };
    const axis = document.createElementNS(NS, "line");
    axis.setAttribute("x1", "40");
    axis.setAttribute("y1", "140");
    axis.setAttribute("x2", "590");
    axis.setAttribute("y2", "140");
    axis.setAttribute("class", "axis");
    svg.appendChild(axis);
    text(4, 20, String(max));
    text(4, 140, "0");
    if (pts.length >= 1) {
      const span = Math.max(1, pts.length - 1);
      text(40, 156, "-" + (pts.length - 1) + " min");
      text(560, 156, "now");
      const line = document.createElementNS(NS, "polyline");
      line.setAttribute(
        "points",
        pts.map((p, i) => (40 + (i / span) * 550).toFixed(1) + "," + (140 - (p.v / max) * 120).toFixed(1)).join(" "),
      );
      line.setAttribute("class", "series");
      svg.appendChild(line);
    }
    const total = pts.reduce((n, p) => n + p.v, 0);
    $("chart-note").textContent =
      "Items finished (complete or failed) per minute over the last " + pts.length + " min, from the store; " +
      total + " in all, " + (pts.length ? pts[pts.length - 1].v : 0) + " so far this minute.";
  }

  async function refreshStatus() {
    const s = await api("/runs/" + enc(RUN));
    packageInfo = new Map(s.packages.map((p) => [p.package, p]));
    const c = s.counts;
    $("run-state").textContent = s.state;
    setProgress(progressBar($("progress")), c);
    showActions(s.state, c);
    $("counts").textContent =
      c.total + " items · " + c.pending + " pending · " + (c.blocked || 0) + " blocked · " + c.generating +
      " generating · " + (c.in_review ? c.in_review + " in review · " : "") + c.complete +
      " complete · " + c.failed + " failed · " + c.cancelled + " cancelled · " +
      fmt(s.throughput_per_minute, 1) + " finished/min · ETA " + etaOf(s);
    const u = s.usage || {};
    const tokens = (u.input_tokens || 0) + (u.output_tokens || 0) + (u.cache_read_tokens || 0) + (u.cache_creation_tokens || 0);
    $("spent").textContent = s.usage ? "Spent: " + money(u.cost_usd || 0) + " · " + fmt(tokens) + " tokens" : "";
    // why a paused run paused (a budget it crossed), from the run's record: read only while paused
    let reason = "";
    if (s.state === "paused") {
      const run = ((await api("/runs")).runs || []).find((r) => r.name === RUN);
      if (run && run.paused_reason) reason = "Paused: " + run.paused_reason;
    }
    $("paused-reason").textContent = reason;
    fillTable(
      $("packages"),
      s.packages.map((p) => [
          p.package,
          p.total_items,
          p.completed_items,
          p.failed_items,
          p.pending_items,
          p.blocked_items || 0,
          p.generating_items,
          p.in_review_items || 0,
          p.usage ? money(p.usage.cost_usd || 0) : "–",
          p.success_rate === undefined ? "–" : (p.success_rate * 100).toFixed(0) + "%",
          fmt(p.p50_duration_seconds, 2),
          fmt(p.p90_duration_seconds, 2),
          fmt(p.total_lines_generated),
          fmt(p.average_quality_score, 2),
          p.priority || 0,
          fmt(p.max_concurrent),
          listText(p.after),
        ]),
    );
    const select = $("retry-package");
    if (select && select.options.length !== s.packages.length) {
      select.replaceChildren(
        ...s.packages.map((p) => {
          const o = el("option", p.package);
          o.value = p.package;
          return o;
        }),
      );
    }
    await loadThroughput();
  }

  async function refreshFailures() {
    const page = await api("/outcomes?run=" + enc(RUN) + "&status=failed&limit=200");
    $("no-failures").hidden = page.outcomes.length > 0;
    $("failures").replaceChildren(
      ...page.outcomes.map((o) => {
        let pick = el("span", "");
        if (CAN_PLAN) {
          pick = document.createElement("input");
          pick.type = "checkbox";
          pick.checked = selected.has(o.id);
          pick.setAttribute("aria-label", "select for retry");
          pick.addEventListener("change", () => {
            toggleSelected(o.id, pick.checked);
          });
        }
        const link = el("a", o.item);
        link.href = "#";
        link.addEventListener("click", (ev) => {
          ev.preventDefault();
          showDetail(o.id);
        });
        return row([pick, o.package, link, o.attempts, o.error_message || ""]);
      }),
    );
  }

  function toggleSelected(id, on) {
    if (on) selected.add(id);
    else selected.delete(id);
    const at = grid.index.get(id);
    if (at) {
      grid.dirty.push(at);
      if (!grid.frame) grid.frame = requestAnimationFrame(paintDirty);
    }
    const count = $("selected-count");
    if (count) count.textContent = String(selected.size);
    const button = document.querySelector('[data-action="retry-selected"]');
    if (button) button.disabled = selected.size === 0;
  }

  // Only the actions that apply to the run as it is: pause an active run, resume a paused one, cancel
  // either (a done or cancelled run has nothing left to stop), retry while there are failed items and
  // the run is not cancelled (cancellation is final).
  function applicableActions(state, c) {
    const open = state === "active" || state === "paused";
    const retry = c.failed > 0 && state !== "cancelled";
    return {
      pause: state === "active",
      resume: state === "paused",
      cancel: open,
      "retry-all": retry,
      "retry-package": retry,
      "retry-selected": retry,
    };
  }
  function showActions(state, c) {
    const box = $("actions");
    if (!box) return;
    const offer = applicableActions(state, c);
    for (const b of box.querySelectorAll("[data-action]")) {
      const on = !!offer[b.getAttribute("data-action")];
      b.hidden = !on;
    }
    const pick = $("retry-package-label");
    if (pick) pick.hidden = !offer["retry-package"];
    box.dataset.ready = "1";
  }

  async function act(action) {
    const run = "/runs/" + enc(RUN);
    let path = run + "/retry";
    let body = {};
    let question;
    if (action === "retry-all") question = "Retry every failed item of this run?";
    else if (action === "retry-package") {
      body = { package: $("retry-package").value };
      question = "Retry the failed items of package " + body.package + "?";
    } else if (action === "retry-selected") {
      body = { outcome_ids: Array.from(selected) };
      question = "Retry the " + selected.size + " selected items?";
    } else {
      path = run + "/control";
      body = { action: action };
      question = action === "cancel" ? "Cancel this run? This is final." : action[0].toUpperCase() + action.slice(1) + " this run?";
    }
    if (!window.confirm(question)) return;
    const out = $("action-result");
    try {
      const r = await api(path, { method: "POST", body: body });
      out.textContent = r.requeued !== undefined ? r.requeued + " items re-queued" : "run " + r.state;
      if (action === "retry-selected") for (const id of Array.from(selected)) toggleSelected(id, false);
    } catch (e) {
      out.textContent = e.message;
    }
  }

  // The tooltip beside the cursor, kept inside the part of the grid box that is visible (the box scrolls,
  // and clips what lies past its edges; the viewport may cut the box too): flipped above or to the left
  // of the cursor where there is no room below or to the right, then clamped.
  function placeTip(tip, ev) {
    const box = $("grid-box");
    const b = box.getBoundingClientRect();
    const originX = b.left + box.clientLeft;
    const originY = b.top + box.clientTop;
    const left = Math.max(originX, 0);
    const top = Math.max(originY, 0);
    const right = Math.min(originX + box.clientWidth, document.documentElement.clientWidth);
    const bottom = Math.min(originY + box.clientHeight, document.documentElement.clientHeight);
    tip.style.maxWidth = Math.max(0, Math.min(640, right - left)) + "px";
    const w = tip.offsetWidth;
    const h = tip.offsetHeight;
    let x = ev.clientX + 12;
    let y = ev.clientY + 12;
    if (x + w > right) x = ev.clientX - 12 - w;
    if (y + h > bottom) y = ev.clientY - 12 - h;
    x = Math.max(left, Math.min(x, right - w));
    y = Math.max(top, Math.min(y, bottom - h));
    // the tip is positioned in the box's scrolled content
    tip.style.left = x - originX + box.scrollLeft + "px";
    tip.style.top = y - originY + box.scrollTop + "px";
  }

  async function runPage() {
    const since = await loadGrid();
    const status = debounce(refreshStatus, 1000);
    const failures = debounce(refreshFailures, 1000);
    const reload = debounce(async () => {
      await loadGrid();
    }, 1000);
    refreshStatus();
    refreshFailures();
    setInterval(status, 30000); // the chart moves on by the minute even when nothing happens
    follow(API + "/runs/" + enc(RUN) + "/events", since, (events) => {
      let needReload = false;
      let failed = false;
      for (const e of events) {
        const to = cellChange(e);
        if (to === null || !e.outcome_id || !setCell(e.outcome_id, to)) {
          // bulk events name their items (up to 100; more: reload the grid)
          const bulk = BULK[e.kind];
          if (bulk && e.data && e.data.count <= (e.data.outcome_ids || []).length) {
            for (const id of e.data.outcome_ids) setCell(id, bulk);
            // a retry puts back to blocked the dependents its failure cancelled: they are not named
            if (e.kind === "requeued" && hasCode(grid.statuses.indexOf("cancelled"))) needReload = true;
          } else if (e.kind !== "integration" && e.kind !== "run_paused" && e.kind !== "run_resumed") {
            needReload = true;
          }
        }
        if (e.kind !== "claimed" && e.kind !== "completed" && e.kind !== "ready") failed = true;
      }
      if (grid.dirty.length && !grid.frame) grid.frame = requestAnimationFrame(paintDirty);
      if (needReload) reload();
      status();
      if (failed) failures();
    });
    const canvas = $("grid");
    const tip = $("tip");
    let hover = null;
    canvas.addEventListener("mousemove", (ev) => {
      hover = ev;
      if (tip.dataset.pending) return;
      tip.dataset.pending = "1";
      requestAnimationFrame(() => {
        delete tip.dataset.pending;
        const at = cellAt(hover);
        if (!at) {
          tip.hidden = true;
          return;
        }
        const p = grid.rows[at[0]];
        tip.textContent = p.name + " / " + p.items[at[1]] + " — " + grid.statuses[p.status[at[1]]];
        tip.hidden = false;
        placeTip(tip, hover);
      });
    });
    canvas.addEventListener("mouseleave", () => {
      tip.hidden = true;
    });
    canvas.addEventListener("click", (ev) => {
      const at = cellAt(ev);
      if (!at) return;
      const id = grid.rows[at[0]].ids[at[1]];
      if (CAN_PLAN && (ev.shiftKey || ev.ctrlKey || ev.metaKey)) toggleSelected(id, !selected.has(id));
      else showDetail(id);
    });
    let width = $("grid-box").clientWidth;
    window.addEventListener("resize", () => {
      if ($("grid-box").clientWidth !== width) {
        width = $("grid-box").clientWidth;
        paintAll();
      }
    });
    for (const b of document.querySelectorAll("[data-action]")) {
      b.addEventListener("click", () => act(b.getAttribute("data-action")));
    }
    for (const b of document.querySelectorAll("[data-review]")) {
      b.addEventListener("click", () => review(b.getAttribute("data-review")));
    }
    // for tests and benches: read the model the canvas and the chart are painted from
    window.matrixBoard = {
      chart: () => chartPoints(),
      status: (id) => {
        const at = grid.index.get(id);
        return at ? grid.statuses[grid.rows[at[0]].status[at[1]]] : null;
      },
      cell: (id) => {
        const at = grid.index.get(id);
        return at
          ? { row: at[0], col: at[1], size: grid.size, x: grid.gutter + at[1] * grid.size, y: grid.header + at[0] * grid.size }
          : null;
      },
      // the column headers as drawn (names as fitted; "" for an unlabelled column) and the band's height
      columns: () => ({ header: grid.header, labels: grid.labels.slice() }),
    };
  }

  document.addEventListener("DOMContentLoaded", () => {
    const start = PAGE === "runs" ? runsPage : PAGE === "run" ? runPage : null;
    if (start) start().catch((e) => setLive(false, "○ " + e.message));
  });
})();
