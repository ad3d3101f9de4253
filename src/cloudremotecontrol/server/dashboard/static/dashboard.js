// CloudRemoteControl dashboard: the live parts of the server-rendered pages.
//
// Rules this file keeps: everything shown comes from machines and is hostile, so it is
// only ever set as text (textContent, text nodes, the title property), never as HTML;
// no inline script (the CSP forbids it); changes go through the /v1 API with the
// session cookie and the page's CSRF token.
"use strict";

(() => {
  const csrf = document.querySelector('meta[name="crc-csrf"]')?.content || "";
  const ROW_HEIGHT = 30;
  const OVERSCAN = 6;
  const TERMINAL = new Set(["succeeded", "failed", "timed_out", "cancelled", "lost", "skipped", "expired"]);

  // -- small helpers ---------------------------------------------------------------------
  function duration(seconds) {
    const s = Math.max(0, Math.floor(seconds));
    if (s < 60) return `${s}s`;
    if (s < 3600) return `${Math.floor(s / 60)}m ${String(s % 60).padStart(2, "0")}s`;
    if (s < 86400) return `${Math.floor(s / 3600)}h ${String(Math.floor((s % 3600) / 60)).padStart(2, "0")}m`;
    return `${Math.floor(s / 86400)}d ${String(Math.floor((s % 86400) / 3600)).padStart(2, "0")}h`;
  }

  function setText(el, text) {
    const value = text == null ? "" : String(text);
    if (el.textContent !== value) el.textContent = value;
  }

  // A machine's text as the CLI shows it (terminal.py's `safe`, the server's pages too):
  // control characters and the bidirectional marks that reorder what is shown escaped
  // (ESC -> "\x1b", U+202E -> "\u202e", newline -> "\n"). Output keeps its line ends
  // (Windows' "\r\n" too) and tabs (`shownOutput`).
  const UNSAFE = /[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]/g;
  const UNSAFE_OUTPUT = /[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]/g;
  const NAMED = { "\n": "\\n", "\r": "\\r", "\t": "\\t" };
  function escapeChar(ch) {
    if (NAMED[ch]) return NAMED[ch];
    const code = ch.charCodeAt(0);
    return code < 0x100 ? `\\x${code.toString(16).padStart(2, "0")}` : `\\u${code.toString(16).padStart(4, "0")}`;
  }
  function safe(text) {
    return text == null ? "" : String(text).replace(UNSAFE, escapeChar);
  }
  function shownOutput(text) {
    return String(text).replace(/\r\n/g, "\n").replace(UNSAFE_OUTPUT, escapeChar);
  }

  function stateClass(state) {
    return "state-" + String(state).replace(/[^a-z_]/g, "");
  }

  async function api(method, path, body) {
    const resp = await fetch(path, {
      method,
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    let payload = null;
    try {
      payload = await resp.json();
    } catch (_) {
      payload = null;
    }
    if (!resp.ok) {
      throw new Error(payload?.error?.message || `the server answered HTTP ${resp.status}`);
    }
    return payload;
  }

  // Times that move: "for 3m 02s" (data-since) and TTL countdowns (data-until).
  function tick() {
    const now = Date.now() / 1000;
    for (const el of document.querySelectorAll("[data-since]")) {
      setText(el, duration(now - Number(el.dataset.since)));
    }
    for (const el of document.querySelectorAll("[data-until]")) {
      const left = Number(el.dataset.until) - now;
      setText(el, left > 0 ? duration(left) : "expired");
      el.classList.toggle("bad", left <= 0);
    }
  }
  setInterval(tick, 1000);

  // -- the event stream (Server-Sent Events of /v1), resumed from the last cursor --------
  function follow(url, cursor, onEvent) {
    const dot = document.querySelector("#live .dot");
    const label = document.getElementById("live-text");
    let last = Number(cursor) || 0;
    let wait = 500;
    let stopped = false;
    let source = null;
    const status = (text, on) => {
      if (label) setText(label, text);
      if (dot) dot.classList.toggle("on", on);
    };
    const open = () => {
      if (stopped) return;
      const sep = url.includes("?") ? "&" : "?";
      source = new EventSource(`${url}${sep}follow=true&since=${last}`);
      source.onopen = () => {
        wait = 500;
        status("live", true);
      };
      source.onmessage = (msg) => {
        let ev;
        try {
          ev = JSON.parse(msg.data);
        } catch (_) {
          return;
        }
        if (typeof ev.cursor !== "number" || ev.cursor <= last) return;
        last = ev.cursor;
        onEvent(ev);
        if (ev.type === "group.deleted") stop("group deleted");
      };
      source.onerror = () => {
        source.close();
        if (stopped) return;
        status("reconnecting…", false);
        setTimeout(retry, wait);
        wait = Math.min(wait * 2, 10000);
      };
    };
    // An EventSource does not say why it failed: ask whether the session is still live
    // (a logout, an expiry or a revoked token cut the stream with 401) and, if it is not,
    // go to the login form, which comes back here, rather than retrying for ever.
    const retry = async () => {
      if (stopped) return;
      try {
        const resp = await fetch("/v1/whoami", { credentials: "same-origin" });
        if (resp.status === 401) {
          stop("signed out");
          const here = window.location.pathname + window.location.search;
          window.location.href = `/dashboard/login?next=${encodeURIComponent(here)}`;
          return;
        }
      } catch (_) {
        /* the server is unreachable: keep trying */
      }
      open();
    };
    const stop = (why) => {
      stopped = true;
      if (source) source.close();
      status(why, false);
    };
    open();
    return { stop };
  }

  // -- panels refreshed by htmx when their events arrive (at most every 700 ms) ----------
  let panelTimer = null;
  let panelLast = 0;
  function panelWants(type) {
    const panel = document.getElementById("panel");
    if (!panel || !panel.dataset.refresh) return false;
    return panel.dataset.refresh.split(" ").some(
      (t) => t === "*" || t === type || (t.endsWith(".") && type.startsWith(t)),
    );
  }
  let panelAgain = false;
  function refreshPanel() {
    if (panelTimer) return;
    const wait = Math.max(0, 700 - (Date.now() - panelLast));
    panelTimer = setTimeout(() => {
      panelTimer = null;
      const panel = document.getElementById("panel");
      if (!panel || !window.htmx) return;
      if (panel.classList.contains("htmx-request")) {
        // A refresh is under way and its answer may predate these events; a refresh
        // htmx queues meanwhile is dropped with the panel its answer replaces. Ask
        // again once that answer is in.
        panelAgain = true;
        return;
      }
      panelLast = Date.now();
      window.htmx.trigger(panel, "crc-refresh");
    }, wait);
  }
  function panelAnswered() {
    if (!panelAgain) return;
    panelAgain = false;
    refreshPanel();
  }
  // The new panel settled (a swap), or the request ended without one (an error).
  document.addEventListener("htmx:afterSettle", panelAnswered);
  document.addEventListener("htmx:afterRequest", panelAnswered);

  // -- the machines table: virtualised (only the rows in view exist) ----------------------
  function osText(facts) {
    const parts = [facts.os_release || facts.os, facts.arch].filter((p) => p);
    return parts.length ? parts.map(String).join(" ") : null;
  }

  class MachineTable {
    constructor(root, rows) {
      this.root = root;
      this.group = root.dataset.group;
      this.shell = root.dataset.shell || "";
      this.rows = rows;
      this.byName = new Map(rows.map((r) => [r.name, r]));
      this.body = root.querySelector(".vbody");
      this.spacer = root.querySelector(".vspacer");
      this.pool = [];
      this.shown = rows;
      this.filter = "";
      this.selected = new Set();
      this.frame = 0;
      this.filterDirty = false;
      this.refetch = new Set();
      this.refetchTimer = null;
      this.body.addEventListener("scroll", () => this.schedule(), { passive: true });
      window.addEventListener("resize", () => this.schedule());
      const input = document.getElementById("machine-filter");
      if (input) {
        input.addEventListener("input", () => {
          this.filter = input.value.trim().toLowerCase();
          this.refilter();
          this.schedule();
        });
      }
      const all = document.getElementById("select-all");
      if (all) {
        all.addEventListener("change", () => {
          for (const r of this.shown) {
            if (all.checked) this.selected.add(r.name);
            else this.selected.delete(r.name);
          }
          this.selectionChanged();
          this.schedule();
        });
      }
      this.refilter();
      this.render();
      performance.mark("crc-machines-rendered");
      setInterval(() => this.schedule(), 1000); // the "for" column moves
    }

    matches(r) {
      if (!this.filter) return true;
      const hay = [r.name, r.state, r.os, r.hostname, r.progress, r.public_ip, ...(r.ips || [])];
      return hay.some((v) => v != null && String(v).toLowerCase().includes(this.filter));
    }

    refilter() {
      this.shown = this.filter ? this.rows.filter((r) => this.matches(r)) : this.rows;
      this.spacer.style.height = `${this.shown.length * ROW_HEIGHT}px`;
      const label = document.getElementById("shown");
      if (label) setText(label, `${this.shown.length} of ${this.rows.length} machines`);
      this.filterDirty = false;
    }

    schedule() {
      if (!this.frame) {
        this.frame = requestAnimationFrame(() => {
          this.frame = 0;
          if (this.filterDirty) this.refilter();
          this.render();
        });
      }
    }

    makeRow() {
      const row = document.createElement("div");
      row.className = "vrow";
      const cell = (cls) => {
        const span = document.createElement("span");
        span.className = cls;
        row.append(span);
        return span;
      };
      const sel = cell("c-sel");
      const box = document.createElement("input");
      box.type = "checkbox";
      box.addEventListener("change", () => {
        if (box.checked) this.selected.add(row.dataset.name);
        else this.selected.delete(row.dataset.name);
        this.selectionChanged();
      });
      sel.append(box);
      const cells = {
        box,
        name: cell("c-name"),
        state: cell("c-state"),
        since: cell("c-since"),
        progress: cell("c-progress"),
        os: cell("c-os"),
        ips: cell("c-ips"),
        seen: cell("c-seen"),
        act: cell("c-act"),
      };
      const bar = document.createElement("span");
      bar.className = "bar";
      const fill = document.createElement("span");
      fill.className = "fill";
      bar.append(fill);
      const text = document.createElement("span");
      text.className = "ptext";
      cells.progress.append(bar, text);
      cells.bar = bar;
      cells.fill = fill;
      cells.ptext = text;
      if (this.shell) {
        const button = document.createElement("button");
        button.type = "button";
        button.className = "term";
        button.textContent = "Terminal";
        button.addEventListener("click", () => {
          const name = row.dataset.name;
          window.location.href = `/dashboard/groups/${encodeURIComponent(this.group)}/machines/${encodeURIComponent(name)}/terminal`;
        });
        cells.act.append(button);
      }
      row.cells_ = cells;
      this.spacer.append(row);
      return row;
    }

    fill(row, r) {
      const c = row.cells_;
      const now = Date.now() / 1000;
      if (row.dataset.name !== r.name) row.dataset.name = r.name;
      c.box.checked = this.selected.has(r.name);
      setText(c.name, r.name);
      setText(c.state, r.state);
      const cls = `c-state ${stateClass(r.state)}`;
      if (c.state.className !== cls) c.state.className = cls;
      setText(c.since, duration(now - r.since));
      const pct = typeof r.percent === "number" ? Math.max(0, Math.min(100, r.percent)) : null;
      c.bar.hidden = pct === null;
      if (pct !== null) c.fill.style.width = `${pct}%`;
      const ptext = (pct !== null ? `${Math.round(pct)}% ` : "") + safe(r.progress);
      setText(c.ptext, ptext);
      if (c.progress.title !== ptext) c.progress.title = ptext;
      setText(c.os, safe(r.os));
      const ips = [...(r.ips || [])];
      if (r.public_ip && !ips.includes(r.public_ip)) ips.push(r.public_ip);
      const iptext = ips.map(safe).join(" ");
      setText(c.ips, iptext);
      if (c.ips.title !== iptext) c.ips.title = iptext;
      const host = r.hostname != null ? `host ${safe(r.hostname)}` : "";
      if (c.name.title !== host) c.name.title = host;
      setText(c.seen, r.last_seen ? `${duration(now - r.last_seen)} ago` : "-");
    }

    render() {
      const top = this.body.scrollTop;
      const height = this.body.clientHeight || 600;
      const first = Math.max(0, Math.floor(top / ROW_HEIGHT) - OVERSCAN);
      const last = Math.min(this.shown.length, Math.ceil((top + height) / ROW_HEIGHT) + OVERSCAN);
      const need = Math.max(0, last - first);
      while (this.pool.length < need) this.pool.push(this.makeRow());
      for (let i = 0; i < this.pool.length; i++) {
        const row = this.pool[i];
        if (i < need) {
          const r = this.shown[first + i];
          row.hidden = false;
          row.style.transform = `translateY(${(first + i) * ROW_HEIGHT}px)`;
          this.fill(row, r);
        } else if (!row.hidden) {
          row.hidden = true;
        }
      }
    }

    selectionChanged() {
      const to = document.getElementById("run-to");
      if (!to) return;
      const names = this.rows.filter((r) => this.selected.has(r.name)).map((r) => r.name);
      to.value = names.length === 0 || names.length === this.rows.length ? "all" : names.join(",");
    }

    counts() {
      const el = document.getElementById("counts");
      if (!el) return;
      const counts = new Map();
      for (const r of this.rows) counts.set(r.state, (counts.get(r.state) || 0) + 1);
      const spans = [...counts.keys()].sort().map((state) => {
        const span = document.createElement("span");
        span.className = `count ${stateClass(state)}`;
        span.textContent = `${counts.get(state)} ${state}`;
        return span;
      });
      el.replaceChildren(...spans.flatMap((s) => [s, " "]));
    }

    apply(ev) {
      const r = ev.machine != null ? this.byName.get(ev.machine) : undefined;
      if (ev.type === "group.expired") {
        const ttl = document.getElementById("ttl");
        if (ttl) {
          delete ttl.dataset.until;
          setText(ttl, "expired");
          ttl.classList.add("bad");
        }
      }
      if (!r) return;
      const data = ev.data && typeof ev.data === "object" ? ev.data : {};
      if (ev.type === "machine.state") {
        r.state = String(data.state);
        r.since = ev.time;
        this.counts();
        if (r.state === "enrolled" || r.state === "ready") this.queueRefetch(r.name);
      } else if (ev.type === "progress") {
        r.progress = data.text == null ? null : String(data.text);
        r.percent = typeof data.percent === "number" ? data.percent : null;
        r.last_seen = ev.time;
      } else if (ev.type === "facts") {
        r.os = osText(data);
        r.hostname = data.hostname == null ? null : String(data.hostname);
        r.ips = Array.isArray(data.ips) ? data.ips.slice(0, 8).map(String) : [];
      } else {
        return;
      }
      if (this.filter) this.filterDirty = true;
      this.schedule();
    }

    // A (re)connection also changes what only the server saw (the address it came
    // from, last seen): fetch those rows, a few at a time.
    queueRefetch(name) {
      this.refetch.add(name);
      if (this.refetchTimer) return;
      this.refetchTimer = setTimeout(async () => {
        const names = [...this.refetch].slice(0, 200);
        names.forEach((n) => this.refetch.delete(n));
        this.refetchTimer = null;
        try {
          const resp = await fetch(
            `/dashboard/groups/${this.group}/rows?names=${encodeURIComponent(names.join(","))}`,
            { credentials: "same-origin" },
          );
          if (!resp.ok) return;
          const body = await resp.json();
          for (const fresh of body.machines || []) {
            const r = this.byName.get(fresh.name);
            if (r) Object.assign(r, fresh);
          }
          this.counts();
          this.schedule();
        } catch (_) {
          /* the next state change tries again */
        }
        if (this.refetch.size) this.queueRefetch([...this.refetch][0]);
      }, 1000);
    }
  }

  // -- "run a command" (the same job API as `crc run`) -----------------------------------
  function runForm() {
    const form = document.getElementById("run-form");
    if (!form) return;
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      const err = document.getElementById("run-error");
      setText(err, "");
      const to = form.elements.to.value.trim() || "all";
      const command = form.elements.command.value;
      try {
        const job = await api("POST", `/v1/groups/${form.dataset.group}/jobs`, { to, command });
        window.location.href = `/dashboard/jobs/${job.job_id}`;
      } catch (exc) {
        setText(err, exc.message);
      }
    });
  }

  // -- a job: statuses, exit codes and output per machine, live; cancel ------------------

  // One machine's output in its <pre>: its last `tail` characters, live as when rendered
  // (a job that prints for hours must not grow the page until the tab freezes), kept in
  // blocks of about BLOCK characters that end at a line's end. Output only ever changes
  // the last block and drops the first: the browser lays out those two, not the whole
  // text (one text of 256 Ki characters took a quarter of a second per line added).
  const BLOCK = 4096;
  class Output {
    constructor(pre, tail) {
      this.pre = pre;
      this.tail = tail;
      this.size = 0;
      const text = pre.textContent;
      pre.replaceChildren();
      this.add(text);
    }

    atEnd() {
      const pre = this.pre;
      return pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
    }

    toEnd() {
      this.pre.scrollTop = this.pre.scrollHeight;
    }

    // Append `text`; true when the start of the output was dropped.
    add(text) {
      let last = this.pre.lastElementChild;
      let rest = text;
      while (rest) {
        if (!last || last.firstChild.length >= BLOCK) {
          last = document.createElement("span");
          last.className = "block";
          last.append(document.createTextNode(""));
          this.pre.append(last);
        }
        const node = last.firstChild;
        const room = BLOCK - node.length;
        let take = rest.length;
        if (take > room) {
          // End the block at a line's end; a line far longer than a block is cut.
          const nl = rest.indexOf("\n", room - 1);
          take = nl >= 0 && nl < room + 3 * BLOCK ? nl + 1 : Math.min(take, room + 3 * BLOCK);
          const high = rest.charCodeAt(take - 1);
          if (take < rest.length && high >= 0xd800 && high <= 0xdbff) take += 1;
        }
        node.appendData(rest.slice(0, take));
        rest = rest.slice(take);
      }
      this.size += text.length;
      let cut = false;
      while (this.size > this.tail && this.pre.firstElementChild) {
        const first = this.pre.firstElementChild;
        const node = first.firstChild;
        const extra = this.size - this.tail;
        cut = true;
        if (node.length <= extra) {
          this.size -= node.length;
          first.remove();
        } else {
          // Cut where a character starts (not between the halves of a surrogate pair).
          const low = node.data.charCodeAt(extra);
          const n = low >= 0xdc00 && low <= 0xdfff ? extra + 1 : extra;
          node.deleteData(0, n);
          this.size -= n;
        }
      }
      return cut;
    }
  }

  function jobPage(root) {
    const id = root.dataset.job;
    const rows = new Map([...root.querySelectorAll("#targets tr[data-machine]")].map((tr) => [tr.dataset.machine, tr]));
    const outs = new Map([...root.querySelectorAll("section.output")].map((s) => [s.dataset.machine, s]));
    const cancel = document.getElementById("cancel");
    const tail = Number(root.dataset.tail) || 262144;
    const outputs = new Map([...outs].map(([m, s]) => [m, new Output(s.querySelector("pre"), tail)]));
    // Output that arrived since the last frame, per machine (its last `tail` characters:
    // a tab in the background draws no frame for as long as it stays there).
    const pending = new Map();
    // Machines whose output so far ends in "\r", not yet shown: Windows' "\r\n" may fall
    // across two pieces (one ends in "\r", the next starts with "\n"), and is then one
    // line end, as when the output is whole. Shown ("\r") once their target ended.
    const heldCR = new Set();
    let pendingCut = false;
    let frame = 0;
    const flush = () => {
      frame = 0;
      const batch = [...pending].map(([m, text]) => [outputs.get(m), text]);
      pending.clear();
      const atEnd = batch.map(([out]) => out.atEnd()); // every read before any write
      let cut = pendingCut;
      pendingCut = false;
      for (const [out, text] of batch) cut = out.add(text) || cut;
      batch.forEach(([out], i) => atEnd[i] && out.toEnd());
      const note = document.getElementById("output-cut");
      if (cut && note) note.hidden = false;
    };
    const open = () => [...rows.values()].some((tr) => !TERMINAL.has(tr.querySelector(".status").textContent));
    let stream = null;
    const onEvent = (ev) => {
      const data = ev.data && typeof ev.data === "object" ? ev.data : {};
      if (ev.type === "job.output") {
        const section = outs.get(ev.machine);
        if (!section) return;
        const text = String(data.data ?? "");
        let piece = (heldCR.delete(ev.machine) ? "\r" : "") + text;
        if (piece.endsWith("\r")) {
          heldCR.add(ev.machine);
          piece = piece.slice(0, -1);
        }
        let waiting = (pending.get(ev.machine) || "") + shownOutput(piece);
        if (waiting.length > tail) {
          const low = waiting.charCodeAt(waiting.length - tail);
          waiting = waiting.slice(waiting.length - tail + (low >= 0xdc00 && low <= 0xdfff ? 1 : 0));
          pendingCut = true;
        }
        pending.set(ev.machine, waiting);
        if (!frame) frame = requestAnimationFrame(flush);
        const tr = rows.get(ev.machine);
        const bytes = tr && tr.querySelector(".bytes");
        if (bytes) {
          const total = Number(bytes.dataset.bytes || 0) + new TextEncoder().encode(text).length;
          bytes.dataset.bytes = String(total);
          setText(bytes, `${total} bytes`);
        }
        section.hidden = false;
      } else if (ev.type === "job.status") {
        const tr = rows.get(ev.machine);
        if (!tr) return;
        const status = tr.querySelector(".status");
        setText(status, data.status);
        status.className = `status ${stateClass(data.status)}`;
        setText(tr.querySelector(".exit"), data.exit_code ?? "");
        setText(tr.querySelector(".reason"), safe(data.reason));
        if (TERMINAL.has(String(data.status)) && heldCR.delete(ev.machine)) {
          pending.set(ev.machine, (pending.get(ev.machine) || "") + shownOutput("\r"));
          if (!frame) frame = requestAnimationFrame(flush);
        }
        if (!open()) {
          if (cancel) cancel.hidden = true;
          if (stream) stream.stop("finished");
        }
      }
    };
    if (cancel) {
      cancel.addEventListener("click", async () => {
        const err = document.getElementById("cancel-error");
        setText(err, "");
        cancel.disabled = true;
        try {
          await api("POST", `/v1/jobs/${id}/cancel`);
        } catch (exc) {
          setText(err, exc.message);
          cancel.disabled = false;
        }
      });
    }
    if (open()) {
      stream = follow(`/v1/jobs/${id}/events`, root.dataset.cursor, onEvent);
    } else {
      const label = document.getElementById("live-text");
      if (label) setText(label, "finished");
    }
  }

  // -- start ------------------------------------------------------------------------------
  function start() {
    tick();
    runForm();
    const job = document.getElementById("job");
    if (job) jobPage(job);
    const live = document.getElementById("live");
    if (!live || !live.dataset.group) return;
    let table = null;
    const root = document.getElementById("machines");
    const island = document.getElementById("machines-data");
    if (root && island) table = new MachineTable(root, JSON.parse(island.textContent));
    follow(`/v1/groups/${live.dataset.group}/events`, live.dataset.cursor, (ev) => {
      if (table) table.apply(ev);
      if (panelWants(ev.type)) refreshPanel();
    });
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
