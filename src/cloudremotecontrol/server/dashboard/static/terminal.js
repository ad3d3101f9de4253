// CloudRemoteControl dashboard: a terminal on a machine (xterm.js) over `crc shell`'s
// stream. The stream is opened with the same POST as the CLI (the session cookie and
// the page's CSRF token), then its WebSocket is dialed from this page (the server checks
// the Origin and the session). Binary messages are terminal bytes; text messages are
// control objects (stream.resize out; stream.exit / stream.error in). Machine output
// only ever reaches xterm.js's write(): it is drawn as terminal text, never parsed as HTML.
"use strict";

(() => {
  const meta = (name) => document.querySelector(`meta[name="${name}"]`)?.content || "";
  const csrf = meta("crc-csrf");
  const nonce = meta("crc-style-nonce");

  // xterm.js keeps its measured cell size and colours in <style> elements it creates;
  // the page's policy admits style elements carrying this response's nonce, so give
  // the nonce to the style elements created on this page (only scripts of this server
  // run here: script-src 'self').
  if (nonce) {
    const create = Document.prototype.createElement;
    Document.prototype.createElement = function (tag, options) {
      const el = create.call(this, tag, options);
      if (String(tag).toLowerCase() === "style") el.setAttribute("nonce", nonce);
      return el;
    };
  }

  function copyButtons() {
    for (const button of document.querySelectorAll("button[data-copy]")) {
      button.addEventListener("click", async () => {
        const text = document.getElementById(button.dataset.copy)?.textContent || "";
        try {
          await navigator.clipboard.writeText(text);
          button.textContent = "Copied";
        } catch (_) {
          const range = document.createRange();
          range.selectNodeContents(document.getElementById(button.dataset.copy));
          const sel = window.getSelection();
          sel.removeAllRanges();
          sel.addRange(range);
          button.textContent = "Selected: Ctrl-C";
        }
      });
    }
  }

  function start() {
    copyButtons();
    const root = document.getElementById("terminal");
    if (!root || typeof Terminal === "undefined") return;
    const group = root.dataset.group;
    const machine = root.dataset.machine;
    const status = document.getElementById("term-status");
    const again = document.getElementById("term-open");
    const setStatus = (state, text) => {
      status.dataset.state = state;
      status.textContent = text;
    };

    const term = new Terminal({ cursorBlink: true, scrollback: 5000, fontSize: 14 });
    const fit = new FitAddon.FitAddon();
    term.loadAddon(fit);
    term.open(root);
    fit.fit();
    window.crcTerminal = term; // for tests and the console: the terminal's buffer

    let ws = null;
    const encoder = new TextEncoder();
    const send = (data) => {
      if (ws && ws.readyState === WebSocket.OPEN) ws.send(data);
    };
    term.onData((text) => send(encoder.encode(text)));
    term.onBinary((text) => send(Uint8Array.from(text, (c) => c.charCodeAt(0) & 255)));
    term.onResize(({ cols, rows }) => send(JSON.stringify({ type: "stream.resize", cols, rows })));
    let pending = 0;
    const refit = () => {
      cancelAnimationFrame(pending);
      pending = requestAnimationFrame(() => fit.fit());
    };
    window.addEventListener("resize", refit);
    new ResizeObserver(refit).observe(root);

    function ended(state, text) {
      setStatus(state, text);
      again.hidden = false;
      ws = null;
    }

    function control(raw) {
      let msg = null;
      try {
        msg = JSON.parse(raw);
      } catch (_) {
        return;
      }
      if (msg?.type === "stream.exit") {
        const code = Number(msg.code);
        status.dataset.exit = String(code);
        term.write(`\r\n[exited with code ${code}]\r\n`);
        ended("exited", `exited with code ${code}`);
      } else if (msg?.type === "stream.error") {
        ended("error", `${String(msg.code)}: ${String(msg.message)}`);
      }
    }

    async function open() {
      again.hidden = true;
      delete status.dataset.exit;
      setStatus("opening", `opening a shell on ${machine}…`);
      let resp = null;
      let payload = null;
      try {
        resp = await fetch(`/v1/groups/${encodeURIComponent(group)}/streams`, {
          method: "POST",
          credentials: "same-origin",
          headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
          body: JSON.stringify({
            machine,
            kind: "shell",
            cols: term.cols,
            rows: term.rows,
            term: "xterm-256color",
          }),
        });
        payload = await resp.json();
      } catch (_) {
        payload = null;
      }
      if (!resp || !resp.ok || !payload?.stream) {
        const why = payload?.error?.message || (resp ? `the server answered HTTP ${resp.status}` : "the server is unreachable");
        ended("error", why);
        return;
      }
      const scheme = location.protocol === "https:" ? "wss" : "ws";
      const socket = new WebSocket(`${scheme}://${location.host}/v1/streams/${encodeURIComponent(payload.stream)}`);
      socket.binaryType = "arraybuffer";
      ws = socket;
      socket.addEventListener("open", () => {
        setStatus("open", `connected to ${machine}`);
        term.focus();
      });
      socket.addEventListener("message", (ev) => {
        if (typeof ev.data === "string") control(ev.data);
        else term.write(new Uint8Array(ev.data));
      });
      socket.addEventListener("close", (ev) => {
        if (ws === socket) ended("closed", `disconnected (WebSocket closed, code ${ev.code})`);
      });
    }

    again.addEventListener("click", () => {
      term.reset();
      open();
    });
    open();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
