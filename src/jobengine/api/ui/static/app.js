// jobengine's dashboard: live updates from the server's event stream, and the charts.
//
// Each page says in <body> where the event stream stood when its data was
// read (data-cursor) and which events concern it (data-watch: "*" for any,
// "listed" for the jobs in its table, or job ids). The script follows
// GET /v1/events from that cursor (server-sent events: no polling) and, for
// an event that concerns the page, re-reads the page and swaps its <main>,
// or, on the jobs list, updates the row's status in place (a selection stays
// selected). A lost connection is picked up where it stopped: the browser
// resends the last event id itself, and a stream that failed for good is
// opened again from the last cursor seen.
"use strict";

(function () {
  const body = document.body;
  let cursor = body.dataset.cursor || "";
  let source = null;
  let failures = 0;

  function setState(text, cls) {
    const el = document.getElementById("live-state");
    if (el) { el.textContent = text; el.className = "live-state " + cls; }
  }

  // -- following the event stream -------------------------------------------------------

  function connect() {
    if (!cursor) return;  // a page that is not live (sign-in, errors)
    source = new EventSource("/v1/events?after=" + encodeURIComponent(cursor));
    source.onopen = function () { failures = 0; setState("live", "up"); };
    source.onmessage = function (message) {
      if (message.lastEventId) cursor = message.lastEventId;
      let event;
      try { event = JSON.parse(message.data); } catch (e) { return; }
      if (event.cursor) cursor = event.cursor;
      onEvent(event);
    };
    source.onerror = function () {
      setState("reconnecting…", "down");
      if (source.readyState !== EventSource.CLOSED) return;  // the browser retries by itself
      source = null;
      failures += 1;
      if (failures > 5) { window.location.reload(); return; }  // e.g. signed out meanwhile
      window.setTimeout(connect, Math.min(15000, 500 * 2 ** failures));
    };
  }

  function watched() {
    const watch = (body.dataset.watch || "").trim();
    if (watch === "*" || watch === "listed" || watch === "") return watch;
    return new Set(watch.split(/\s+/));
  }

  function onEvent(event) {
    const watch = watched();
    if (watch === "*") { refresh(1000); return; }
    if (watch === "listed") { updateRow(event); return; }
    if (watch instanceof Set && watch.has(String(event.job_id))) refresh(50);
    // (event: the stream's message; its envelope holds from_status, to_status, ...)
  }

  // -- the jobs list: rows change in place ------------------------------------------------

  function updateRow(message) {
    const event = message.envelope || {};
    const cell = document.querySelector('[data-status-of="' + event.job_id + '"]');
    if (cell && event.to_status) {
      const badge = document.createElement("span");
      badge.className = "status s-" + event.to_status;
      badge.textContent = event.to_status;
      cell.replaceChildren(badge);
      const updated = document.querySelector('[data-updated-of="' + event.job_id + '"]');
      if (updated && event.occurred_at) updated.textContent = new Date(event.occurred_at).toLocaleString();
      cell.parentElement.classList.add("changed");
    }
    const table = document.getElementById("jobs-table");
    if (message.event_type === "job.created" && table && table.dataset.firstPage === "yes") {
      const notice = document.getElementById("new-jobs");
      if (notice) notice.hidden = false;
    }
  }

  // -- re-reading the page ------------------------------------------------------------------

  let timer = null;
  let inFlight = false;
  let again = false;

  function refresh(delay) {
    if (inFlight) { again = true; return; }
    if (timer === null) timer = window.setTimeout(reload, delay);
  }

  async function reload() {
    timer = null;
    inFlight = true;
    try {
      const response = await fetch(window.location.href, {
        credentials: "same-origin", headers: { "Accept": "text/html" }, cache: "no-store",
      });
      if (response.redirected && new URL(response.url).pathname === "/ui/login") {
        window.location.assign(response.url);
        return;
      }
      if (!response.ok) return;
      const page = new DOMParser().parseFromString(await response.text(), "text/html");
      const fresh = page.getElementById("live");
      const live = document.getElementById("live");
      if (fresh && live) {
        const open = new Set(Array.from(live.querySelectorAll("details[open]"), d => d.dataset.key));
        live.replaceChildren(...Array.from(fresh.childNodes, n => document.importNode(n, true)));
        live.querySelectorAll("details").forEach(d => { if (open.has(d.dataset.key)) d.open = true; });
        body.dataset.watch = page.body.dataset.watch || "";
        setup();
      }
    } catch (e) {
      // the server is away: the next event (after the stream reconnects) tries again
    } finally {
      inFlight = false;
      if (again) { again = false; refresh(1000); }
    }
  }

  // -- the overview's charts (uPlot) ---------------------------------------------------------

  let charts = [];

  function drawCharts() {
    charts.forEach(c => c.destroy());
    charts = [];
    const holder = document.getElementById("charts");
    if (!holder || typeof window.uPlot === "undefined") return;
    const data = JSON.parse(holder.dataset.series);
    const width = Math.max(280, Math.min(560, holder.clientWidth - 10));
    const common = { width: width, height: 150, legend: { live: true }, scales: { x: { time: true } } };
    const plots = {
      throughput: {
        series: [{}, { label: "completed", stroke: "#2e7d32", fill: "rgba(46,125,50,0.12)" },
                 { label: "cancelled", stroke: "#757575" }],
        data: [data.t, data.completed, data.cancelled],
      },
      failures: {
        series: [{}, { label: "failed", stroke: "#c62828", fill: "rgba(198,40,40,0.12)" }],
        data: [data.t, data.failed],
      },
      latency: {
        // (points shown: a minute between two empty ones is a lone point, no line)
        series: [{}, { label: "p50 ms", stroke: "#1565c0", points: { show: true, size: 4 } },
                 { label: "p95 ms", stroke: "#ef6c00", points: { show: true, size: 4 } }],
        data: [data.t, data.p50, data.p95],
      },
    };
    holder.querySelectorAll("[data-chart]").forEach(function (el) {
      const plot = plots[el.dataset.chart];
      el.replaceChildren();
      charts.push(new window.uPlot(Object.assign({}, common, { series: plot.series }), plot.data, el));
    });
  }

  // -- the jobs list's "select all" -----------------------------------------------------------

  function setupSelection() {
    const all = document.getElementById("select-all");
    if (!all) return;
    all.addEventListener("change", function () {
      document.querySelectorAll('#jobs-table input[name="ids"]').forEach(b => { b.checked = all.checked; });
    });
  }

  function setup() {
    drawCharts();
    setupSelection();
  }

  document.addEventListener("DOMContentLoaded", function () {
    setup();
    connect();
  });
})();
