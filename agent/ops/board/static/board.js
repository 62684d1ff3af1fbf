// The andon board: follows /api/events (server-sent events) and keeps the page in step, in place.
// Every text from the gateway is set with textContent: alert messages come from PLCs and configs.
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  const SEVERITY_WORDS = { ok: "OK", info: "INFO", warning: "WARNING", critical: "CRITICAL", offline: "OFFLINE" };
  const STALE_MS = 40000; // no message for this long (keepalives come every 15 s): the board may be stale
  const HISTORY_EVERY_MS = 60000; // time lines are redrawn this often, and when a machine's alerts change

  let board = null;
  let offset = 0; // gateway clock - this screen's clock, in ms
  let lastMessage = 0;
  let ackKey = null;
  const historyStamp = new Map(); // machine -> [signature, drawn at]
  // For tests and the latency bench: when each alert appeared and went (this page's epoch ms), the
  // last appearances and goings in order, and how many boards were drawn.
  const record = { seen: {}, gone: {}, events: [], renders: 0, connected: false };
  const note = (kind, key) => {
    const at = wallNow();
    (kind === "seen" ? record.seen : record.gone)[key] = at;
    record.events.push([kind, key, at]);
    if (record.events.length > 2000) record.events.splice(0, 1000);
  };
  window.andonBoard = record;

  const wallNow = () => performance.timeOrigin + performance.now();
  const gatewayNow = () => Date.now() + offset;

  function el(tag, attrs, text) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function setText(node, text) {
    if (node.textContent !== text) node.textContent = text;
  }

  function setFlag(node, name, on) {
    if (on) node.setAttribute(name, "");
    else node.removeAttribute(name);
  }

  function duration(ms) {
    const s = Math.max(0, Math.floor(ms / 1000));
    if (s < 60) return `${s} s`;
    const m = Math.floor(s / 60);
    if (m < 60) return `${m} min`;
    const h = Math.floor(m / 60);
    if (h < 24) return `${h} h ${String(m % 60).padStart(2, "0")} min`;
    return `${Math.floor(h / 24)} d ${h % 24} h`;
  }

  function clock(ms) {
    return new Date(ms).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", hourCycle: "h23" });
  }

  // -- the tiles ----------------------------------------------------------------------------

  function tileFor(machine) {
    let tile = $("machines").querySelector(`[data-machine="${CSS.escape(machine.id)}"]`);
    if (tile) return tile;
    tile = el("article", { class: "tile", "data-machine": machine.id });
    const head = el("header");
    head.append(el("h2", { class: "name" }, machine.id), el("span", { class: "state" }));
    tile.append(head, el("ul", { class: "alerts" }), el("footer", { class: "seen" }));
    $("machines").append(tile);
    return tile;
  }

  function alertItem(list, a) {
    let item = list.querySelector(`[data-alert="${CSS.escape(a.alert)}"]`);
    if (item) return item;
    item = el("li", { class: "alert", "data-alert": a.alert });
    const meta = el("div", { class: "meta" });
    meta.append(el("span", { class: "rule" }), " \u00b7 active ", el("span", { class: "age" }), el("span", { class: "acked" }));
    item.append(el("div", { class: "msg" }), meta);
    list.append(item);
    note("seen", a.alert);
    return item;
  }

  function renderAlert(item, a, canAck) {
    item.setAttribute("data-severity", a.severity);
    item.dataset.since = String(a.since);
    setFlag(item, "data-acked", a.ack !== null);
    setFlag(item, "data-offline", a.offline);
    setText(item.querySelector(".msg"), a.message);
    setText(item.querySelector(".rule"), a.condition ? `${a.rule} / ${a.condition}` : a.rule);
    setText(item.querySelector(".acked"), a.ack ? `acknowledged by ${a.ack.by} at ${clock(a.ack.at)}${a.ack.note ? `: ${a.ack.note}` : ""}` : "");
    let button = item.querySelector("button.ack");
    const wanted = canAck && a.ack === null;
    if (wanted && !button) {
      button = el("button", { class: "ack", type: "button" }, "Acknowledge");
      button.addEventListener("click", () => openAck(item.getAttribute("data-alert")));
      item.append(button);
    } else if (!wanted && button) {
      button.remove();
    }
  }

  function renderMachine(tile, m, canAck) {
    tile.setAttribute("data-state", m.state);
    setFlag(tile, "data-flash", m.alerts.some((a) => a.severity === "critical" && a.ack === null));
    setText(tile.querySelector(".state"), SEVERITY_WORDS[m.state] || m.state);
    const list = tile.querySelector(".alerts");
    const keep = new Set(m.alerts.map((a) => a.alert));
    for (const item of [...list.children]) {
      const key = item.getAttribute("data-alert");
      if (!keep.has(key)) {
        item.remove();
        note("gone", key);
      }
    }
    m.alerts.forEach((a, i) => {
      const item = alertItem(list, a);
      renderAlert(item, a, canAck);
      if (list.children[i] !== item) list.insertBefore(item, list.children[i] || null);
    });
    tile.dataset.lastGood = m.last_good === null ? "" : String(m.last_good);
  }

  function render(next) {
    board = next;
    const where = [next.site, next.gateway].filter(Boolean).join(" \u00b7 ");
    setText($("where"), where ? `Andon \u00b7 ${where}` : "Andon board");
    const ids = new Set(next.machines.map((m) => m.id));
    for (const tile of [...$("machines").children]) {
      if (!ids.has(tile.getAttribute("data-machine"))) tile.remove();
    }
    next.machines.forEach((m, i) => {
      const tile = tileFor(m);
      renderMachine(tile, m, next.ack);
      const grid = $("machines");
      if (grid.children[i] !== tile) grid.insertBefore(tile, grid.children[i] || null);
    });
    renderLights(next.lights || []);
    tick();
    drawHistory(false);
    drawCharts(next.charts || [], next.charts_version || 0);
    record.renders += 1;
  }

  function renderLights(lights) {
    const box = $("lights");
    box.hidden = lights.length === 0;
    box.replaceChildren(
      ...lights.map((l) => el("span", { class: "light", "data-up": String(l.up) }, `${l.id}: ${l.up ? l.shows : `not answering (${l.error || "no answer"})`}`)),
    );
  }

  // Every second: durations, the clock, the "last read" lines and whether the link is fresh.
  function tick() {
    const now = gatewayNow();
    setText($("clock"), clock(now));
    for (const age of document.querySelectorAll(".alert .age")) {
      setText(age, duration(now - Number(age.closest(".alert").dataset.since)));
    }
    for (const tile of document.querySelectorAll(".tile")) {
      const good = tile.dataset.lastGood;
      setText(tile.querySelector(".seen"), good ? `last good read ${duration(now - Number(good))} ago` : "no good read yet");
    }
    if (lastMessage && Date.now() - lastMessage > STALE_MS) setLink("lost", "no news from the gateway");
  }

  // -- history and charts (SVG drawn by the gateway) ----------------------------------------

  function drawHistory(force) {
    if (!board) return;
    const box = $("timelines");
    const now = Date.now();
    const ids = new Set(board.machines.map((m) => m.id));
    for (const fig of [...box.children]) if (!ids.has(fig.dataset.history)) fig.remove();
    board.machines.forEach((m) => {
      const signature = m.alerts.map((a) => `${a.alert}:${a.severity}`).join(",");
      const [seen, at] = historyStamp.get(m.id) || ["", 0];
      let fig = [...box.children].find((f) => f.dataset.history === m.id);
      if (!fig) {
        fig = el("figure", { "data-history": m.id }); // not data-machine: that names the tiles
        fig.append(el("figcaption", {}, m.id), el("img", { alt: `alerts of ${m.id} in the last 24 hours`, width: "960", height: "60" }));
        box.append(fig);
      }
      if (force || signature !== seen || now - at > HISTORY_EVERY_MS || !fig.querySelector("img").src) {
        fig.querySelector("img").src = `/api/machines/${encodeURIComponent(m.id)}/history.svg?at=${now}`;
        historyStamp.set(m.id, [signature, now]);
      }
    });
  }

  // The usage charts (tool life, faults by code) change rarely: the gateway redraws them at most once
  // a minute or after a tool change and says so with charts_version; only then are they fetched again.
  function drawCharts(names, version) {
    const box = $("charts");
    $("usage").hidden = names.length === 0;
    const keep = new Set(names);
    for (const fig of [...box.children]) if (!keep.has(fig.dataset.chart)) fig.remove();
    names.forEach((name, i) => {
      let fig = [...box.children].find((f) => f.dataset.chart === name);
      if (!fig) {
        fig = el("figure", { "data-chart": name });
        fig.append(el("img", { alt: name.replace(/-/g, " "), width: "640", height: "120" }));
      }
      if (box.children[i] !== fig) box.insertBefore(fig, box.children[i] || null);
      const src = `/api/charts/${encodeURIComponent(name)}.svg?v=${version}`;
      const img = fig.querySelector("img");
      if (img.getAttribute("src") !== src) img.setAttribute("src", src);
    });
  }

  // -- acknowledgement -------------------------------------------------------------------------

  function findAlert(key) {
    for (const m of board ? board.machines : []) for (const a of m.alerts) if (a.alert === key) return a;
    return null;
  }

  function openAck(key) {
    const a = findAlert(key);
    if (!a) return;
    ackKey = key;
    const form = $("ack-form");
    setText($("ack-what"), `${a.alert}: ${a.message}`);
    setText($("ack-error"), "");
    form.elements.by.value = localStorage.getItem("andon.by") || "";
    const token = localStorage.getItem("andon.token");
    form.elements.token.value = token || "";
    form.elements.remember.checked = token !== null;
    form.elements.note.value = "";
    $("ack-dialog").showModal();
    (form.elements.by.value ? form.elements.note : form.elements.by).focus();
  }

  async function sendAck(event) {
    event.preventDefault();
    const form = $("ack-form");
    const a = findAlert(ackKey);
    if (!a) {
      setText($("ack-error"), "this alert is no longer active");
      return;
    }
    const by = form.elements.by.value.trim();
    const note = form.elements.note.value.trim();
    const token = form.elements.token.value.trim();
    const path = [a.machine, a.rule].concat(a.condition ? [a.condition] : []).map(encodeURIComponent).join("/");
    $("ack-send").disabled = true;
    try {
      const r = await fetch(`/api/alerts/${path}/ack`, {
        method: "POST",
        headers: { "Content-Type": "application/json", Authorization: `Bearer ${token}` },
        body: JSON.stringify({ by, note: note || null }),
        credentials: "omit",
      });
      if (r.ok) {
        localStorage.setItem("andon.by", by);
        if (form.elements.remember.checked) localStorage.setItem("andon.token", token);
        else localStorage.removeItem("andon.token");
        $("ack-dialog").close();
        return;
      }
      const why = await r.json().catch(() => ({}));
      if (r.status === 401) localStorage.removeItem("andon.token");
      setText($("ack-error"), r.status === 401 ? "wrong token" : why.error || `refused (${r.status})`);
    } catch (err) {
      setText($("ack-error"), "the gateway did not answer; try again");
    } finally {
      $("ack-send").disabled = false;
    }
  }

  // -- the stream --------------------------------------------------------------------------------

  function setLink(state, text) {
    const link = $("link");
    link.setAttribute("data-link", state);
    setText(link, text);
    record.connected = state === "live";
  }

  function connect() {
    const source = new EventSource("/api/events");
    source.addEventListener("open", () => setLink("live", "live"));
    source.addEventListener("board", (e) => {
      const message = JSON.parse(e.data);
      offset = message.now - Date.now();
      lastMessage = Date.now();
      setLink("live", "live");
      render(message.board);
    });
    source.addEventListener("time", (e) => {
      offset = Number(e.data) - Date.now();
      lastMessage = Date.now();
    });
    source.addEventListener("error", () => setLink("connecting", "reconnecting\u2026"));
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("ack-form").addEventListener("submit", sendAck);
    $("ack-cancel").addEventListener("click", () => $("ack-dialog").close());
    setInterval(tick, 1000);
    setInterval(() => drawHistory(false), HISTORY_EVERY_MS);
    connect();
  });
})();
