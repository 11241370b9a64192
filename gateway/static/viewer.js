// meeting-gateway live viewer: subscribes to one meeting and renders its transcript as it happens.
// Wire contract: docs/protocol.md (subscriber endpoint, close codes, transcript export).
"use strict";

(() => {
  const RECONNECT_BASE_MS = 500;
  const RECONNECT_RATE_LIMITED_MS = 5000; // 4429: the gateway asked us to come back later
  const RECONNECT_MAX_MS = 20000;
  const PING_EVERY_MS = 20000; // our own liveness check: browsers hide protocol-level pings
  const PING_ANSWER_MS = 10000;
  const OPEN_TIMEOUT_MS = 15000; // a handshake lost in the network never fails by itself
  const NEAR_BOTTOM_PX = 8; // back to following: within this of the bottom
  const EXPIRY_WARNING_S = 120; // the token's expiry is announced this long before
  const SOURCE_LABELS = { mic: "Mic", system: "System" };
  // gateway/ids.py: the ids the gateway takes.
  const MEETING_ID = /^[A-Za-z0-9][A-Za-z0-9_.@-]{0,127}$/;
  const MEETING_ID_RULE =
    "1-128 characters of letters, digits, '_', '.', '@', '-', starting with a letter or digit";

  // Close codes after which reconnecting cannot help (docs/protocol.md, "Close codes").
  const FINAL_CLOSES = {
    4401: "The gateway refused the token",
    4403: "This token may not watch this meeting",
    4404: "This meeting was deleted",
    4400: "The gateway refused the request",
    1009: "The gateway refused an oversized message",
  };
  const CLOSE_NAMES = {
    1000: "closed",
    1001: "going away",
    1006: "connection lost",
    1011: "gateway error",
    1012: "gateway restarting",
    4408: "too slow",
    4429: "rate limited",
    4503: "gateway dependency unavailable",
  };

  const $ = (id) => document.getElementById(id);
  const ui = {
    meetingName: $("meeting-name"),
    connection: $("connection"),
    connectionText: $("connection-text"),
    connectionDetail: $("connection-detail"),
    joinMeetingHint: $("join-meeting-hint"),
    recordingsStatus: $("recordings-status"),
    historyStatus: $("history-status"),
    join: $("join"),
    joinReason: $("join-reason"),
    joinMeeting: $("join-meeting"),
    joinToken: $("join-token"),
    notice: $("notice"),
    expiry: $("expiry"),
    expiryText: $("expiry-text"),
    expiryRenew: $("expiry-renew"),
    recordings: $("recordings"),
    scroller: $("scroller"),
    finals: $("finals"),
    partials: $("partials"),
    empty: $("empty"),
    jump: $("jump"),
    jumpCount: $("jump-count"),
    tips: $("tips"),
    tipsList: $("tips-list"),
    tipsCount: $("tips-count"),
  };

  const state = {
    meeting: new URLSearchParams(location.search).get("meeting") || "",
    token: new URLSearchParams(location.hash.slice(1)).get("token") || "",
    ws: null,
    stopped: true,
    attempt: 0,
    outage: "",
    reconnectTimer: 0,
    finals: new Map(), // segment_no -> {source, el}
    heldThrough: 0, // every final 1..heldThrough is on the page: resume with since=heldThrough
    highest: 0,
    partials: new Map(), // source -> {segmentNo, el}
    names: {}, // speaker label -> the name people gave it (PATCH /api/v1/meetings/{id})
    title: "",
    labelsAsked: false, // asked once a final shows the meeting exists (no 404 for a new one)
    wasLive: false, // this meeting's subscription was live before: a new one catches up on edits
    tips: new Map(), // tip_no -> element: a tip resent on a resume (since=) is kept once
    following: true,
    lastAutoTop: 0,
    unseen: 0,
  };

  // --- rendering -------------------------------------------------------------------------------

  function clock(ts) {
    const date = ts ? new Date(ts) : new Date();
    if (Number.isNaN(date.getTime())) return "";
    return date.toLocaleTimeString([], {
      hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false,
    });
  }

  function audioTime(ms) {
    if (typeof ms !== "number") return "?";
    const s = Math.floor(ms / 1000);
    return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`;
  }

  function sourceLabel(source) {
    return SOURCE_LABELS[source] || source || "unknown source";
  }

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function fillLine(line, msg) {
    const time = line.querySelector("time");
    time.textContent = clock(msg.ts);
    if (msg.ts) time.dateTime = msg.ts;
    const who = line.querySelector(".who");
    who.dataset.source = msg.source || "";
    who.dataset.speaker = msg.speaker || "";
    labelWho(who);
    line.querySelector(".text").textContent = msg.text || "";
    line.title = `${sourceLabel(msg.source)} audio ${audioTime(msg.start_ms)}–${audioTime(msg.end_ms)}`;
  }

  // A speaker's label ("Speaker 1") shows as the name people gave it, wherever it appears.
  function labelWho(who) {
    const label = who.dataset.speaker;
    const source = sourceLabel(who.dataset.source);
    const name = label ? state.names[label] || label : "";
    // Unchanged text is left alone: rewriting it would read every line's name out again
    // (the transcript is a live region) on each rename or rejoin.
    const text = name || source;
    if (who.textContent !== text) who.textContent = text;
    const title = label ? `${name}${name !== label ? ` (${label})` : ""} · ${source}` : "";
    if (who.title !== title) who.title = title;
  }

  function applyLabels(title, names) {
    state.names = names && typeof names === "object" ? names : {};
    state.title = typeof title === "string" ? title : "";
    for (const who of document.querySelectorAll(".who")) labelWho(who);
    const shown = state.title ? `${state.title} (${state.meeting})` : state.meeting;
    if (state.title) {
      ui.meetingName.replaceChildren(el("bdi", "", state.title), ` (${state.meeting})`);
    } else {
      ui.meetingName.textContent = shown || "(no meeting)";
    }
    document.title = `${shown || "Live transcript"} · meeting-gateway`;
  }

  // Names and title as stored; later changes arrive as `meeting.updated` status messages.
  async function loadLabels() {
    if (state.labelsAsked) return;
    state.labelsAsked = true;
    const meeting = state.meeting;
    try {
      const res = await fetch(`/api/v1/meetings/${encodeURIComponent(meeting)}`, {
        headers: { Authorization: `Bearer ${state.token}` },
      });
      if (!res.ok) return; // a new meeting (404) has no names yet
      const body = await res.json();
      if (meeting !== state.meeting) return; // the reader went to another meeting meanwhile
      applyLabels(body.title, body.speaker_names);
    } catch {
      // Labels are a nicety: the transcript works without them.
    }
  }

  // Edits made while we were away (names, title, corrected finals) sent no message we could
  // get back with since=: read them again once the subscription is live after an outage.
  async function catchUpEdits() {
    state.labelsAsked = false;
    loadLabels();
    if (!state.finals.size) return;
    const meeting = state.meeting;
    let path = `/api/v1/meetings/${encodeURIComponent(meeting)}/transcript?format=json&limit=1000`;
    try {
      while (path && meeting === state.meeting) {
        const res = await fetch(path, { headers: { Authorization: `Bearer ${state.token}` } });
        if (!res.ok) return;
        const page = await res.json();
        if (meeting !== state.meeting) return; // another meeting's lines are on the page now
        for (const final of page.segments || []) {
          const entry = state.finals.get(final.segment_no);
          const text = entry && entry.el.querySelector(".text");
          if (text && typeof final.text === "string" && text.textContent !== final.text) {
            text.textContent = final.text;
            entry.el.classList.add("corrected");
          }
        }
        path = page.next && page.segments && page.segments.length ? page.next : null;
        if (page.segments && page.segments.some((f) => f.segment_no >= state.heldThrough)) break;
      }
    } catch {
      // A nicety, as the labels: the live transcript goes on without it.
    }
  }

  function onCorrection(msg) {
    const entry = state.finals.get(msg.segment_no);
    if (typeof msg.text !== "string") return;
    // Tips made from the words this correction replaced are withdrawn.
    for (const tipNo of Array.isArray(msg.withdrawn_tips) ? msg.withdrawn_tips : []) {
      dropTip(Number(tipNo));
    }
    if (msg.edited_by === "gateway") {
      // A number handed out twice: this is the final the store keeps under it, whole. Held
      // with the other final's words, speaker and source, or not held yet: take this one.
      if (!entry) {
        onFinal({ ...msg, type: "transcript.final" });
        return;
      }
      fillLine(entry.el, msg);
      entry.source = msg.source;
      return;
    }
    if (!entry) return;
    entry.el.querySelector(".text").textContent = msg.text;
    entry.el.classList.add("corrected");
    entry.el.dataset.editedBy = msg.edited_by || "";
  }

  // Each speaker's words take their own direction (Arabic, Hebrew) and stay isolated from what
  // is around them: a right-to-left line reads right to left, a name does not reorder the line.
  function autoDir(node) {
    node.dir = "auto";
    return node;
  }

  function newLine(tag, kind, msg) {
    const line = el(tag, `line ${kind}`);
    const meta = el("span", "meta");
    meta.append(el("time"), autoDir(el("span", "who")));
    line.append(meta);
    if (kind === "partial") {
      const body = el("span", "body");
      body.append(el("span", "provisional", "provisional"), " ", autoDir(el("span", "text")));
      line.append(body);
    } else {
      line.append(autoDir(el("span", "text")));
    }
    line.dataset.segmentNo = String(msg.segment_no);
    fillLine(line, msg);
    return line;
  }

  function contentChanged(newFinal) {
    ui.empty.hidden = state.finals.size > 0 || state.partials.size > 0;
    if (state.following) {
      scrollToEnd();
    } else if (newFinal) {
      state.unseen += 1;
      ui.jumpCount.textContent = `(${state.unseen} new)`;
      ui.jump.hidden = false;
    }
  }

  function scrollToEnd() {
    ui.scroller.scrollTop = ui.scroller.scrollHeight;
    state.lastAutoTop = ui.scroller.scrollTop;
  }

  // The reader scrolls up by key or wheel: stop following at once. A step (an arrow key's 40
  // px) may stay within reach of the bottom, and the next partial would pull the view back.
  function onReaderScrollsUp(event) {
    const up = event.type === "wheel"
      ? event.deltaY < 0
      : ["ArrowUp", "PageUp", "Home"].includes(event.key);
    const s = ui.scroller;
    // Only a transcript that scrolls, away from its top: a wheel before the lines overflow
    // moves nothing and must not stop the following.
    if (up && state.following && s.scrollTop > 0 && s.scrollHeight > s.clientHeight) {
      state.following = false;
      ui.jump.hidden = false;
    }
  }

  function onScroll() {
    const s = ui.scroller;
    if (s.scrollTop + s.clientHeight >= s.scrollHeight - NEAR_BOTTOM_PX) {
      state.following = true;
      state.unseen = 0;
      if (document.activeElement === ui.jump) ui.scroller.focus(); // not lost with the button
      ui.jump.hidden = true;
    } else if (s.scrollTop < state.lastAutoTop - 4) {
      state.following = false; // the reader scrolled up: leave the view where they put it
      ui.jump.hidden = false;
    }
  }

  function jumpToLive() {
    state.following = true;
    state.unseen = 0;
    ui.jumpCount.textContent = "";
    ui.jump.hidden = true;
    scrollToEnd();
    ui.scroller.focus();
  }

  // --- messages --------------------------------------------------------------------------------

  function onFinal(msg) {
    const no = msg.segment_no;
    if (!Number.isInteger(no) || state.finals.has(no)) return; // resumed history: already shown
    const partial = state.partials.get(msg.source);
    // A partial's number is a prediction its final can only exceed; an older re-delivered final
    // of the same source must not remove the utterance in progress.
    if (partial && no >= partial.segmentNo) dropPartial(msg.source);
    const line = newLine("li", "final", msg);
    line.id = `seg-${no}`;
    if (typeof msg.edited_by === "string" && msg.edited_by) {
      // A final corrected before we joined (history with since=): marked as a watcher's is.
      line.classList.add("corrected");
      line.dataset.editedBy = msg.edited_by;
    }
    let next = null; // finals mostly arrive in order: append unless a later one is already here
    if (no < state.highest) {
      for (const [other, entry] of state.finals) {
        if (other > no && (!next || other < Number(next.dataset.segmentNo))) next = entry.el;
      }
    }
    ui.finals.insertBefore(line, next);
    state.finals.set(no, { source: msg.source, el: line });
    loadLabels();
    state.highest = Math.max(state.highest, no);
    while (state.finals.has(state.heldThrough + 1)) state.heldThrough += 1;
    contentChanged(true);
  }

  function onPartial(msg) {
    const source = msg.source || "";
    const held = state.finals.get(msg.segment_no);
    if (held && held.source === source) return; // its final is already here
    if (!msg.text) {
      dropPartial(source);
      contentChanged(false);
      return;
    }
    let partial = state.partials.get(source);
    if (partial && partial.segmentNo !== msg.segment_no) {
      dropPartial(source); // a new utterance of this source replaces the previous one
      partial = undefined;
    }
    if (partial) {
      fillLine(partial.el, msg); // the same element, updated in place
    } else {
      const line = newLine("div", "partial", msg);
      line.dataset.key = `${source}:${msg.segment_no}`;
      partial = { segmentNo: msg.segment_no, el: line };
      state.partials.set(source, partial);
      const after = [...state.partials.keys()].sort().filter((s) => s > source)[0];
      ui.partials.insertBefore(line, after ? state.partials.get(after).el : null);
    }
    contentChanged(false);
  }

  function dropPartial(source) {
    const partial = state.partials.get(source);
    if (!partial) return;
    partial.el.remove();
    state.partials.delete(source);
  }

  function dropAllPartials() {
    for (const source of [...state.partials.keys()]) dropPartial(source);
  }

  // A progress bar per recording job of the meeting, from `status` messages with
  // kind "recording" (docs/protocol.md, "Recording status"); an ended job keeps its last line.
  const ENDED_JOB = {
    succeeded: "Recording transcribed", failed: "Recording failed", cancelled: "Recording cancelled",
  };

  function onRecordingStatus(msg) {
    let row = ui.recordings.querySelector(`[data-job="${CSS.escape(msg.job_id)}"]`);
    if (!row) {
      row = el("div", "recording");
      row.dataset.job = msg.job_id;
      const bar = el("progress", "recording-bar");
      bar.max = 1;
      bar.setAttribute("aria-label", "Recording transcribed");
      row.append(el("span", "recording-label"), bar, el("span", "recording-text"));
      ui.recordings.append(row);
      ui.recordings.hidden = false;
    }
    if (row.dataset.status !== msg.status && ENDED_JOB[msg.status]) {
      // Its end is said once (the progress itself is not announced).
      ui.recordingsStatus.textContent = msg.error
        ? `${ENDED_JOB[msg.status]}: ${msg.error}` : ENDED_JOB[msg.status];
    }
    row.dataset.status = msg.status;
    const bar = row.querySelector("progress");
    bar.value = msg.status === "succeeded" ? 1 : Number(msg.progress) || 0;
    const done = (msg.audio_ms_done || 0) / 1000;
    const total = (msg.audio_ms_total || 0) / 1000;
    row.querySelector(".recording-label").textContent = "Recording";
    let text = `${Math.round(bar.value * 100)}% · ${done.toFixed(0)} / ${total.toFixed(0)} s`;
    if (msg.status !== "running") text = `${msg.status} · ${text}`;
    if (msg.error) text += ` · ${msg.error}`;
    row.querySelector(".recording-text").textContent = text;
  }

  // Live tips (`ai.tip`, docs/protocol.md): one card per tip_no, in number order.
  const TIP_KINDS = {
    decision: "Decision", action_item: "Action item", question: "Question", summary: "Summary",
  };

  function onTip(msg) {
    const tipNo = Number(msg.tip_no);
    if (!Number.isInteger(tipNo) || state.tips.has(tipNo)) return;
    const card = el("li", "tip");
    card.dataset.tipNo = String(tipNo);
    card.dataset.kind = String(msg.kind || "");
    card.append(
      el("span", "tip-kind", TIP_KINDS[msg.kind] || "Note"),
      autoDir(el("span", "tip-text", msg.text || "")),
    );
    const meta = [];
    if (msg.owner) meta.push(`Owner: ${state.names[msg.owner] || msg.owner}`);
    if (msg.due) meta.push(`Due: ${msg.due}`);
    if (meta.length) card.append(el("span", "tip-meta", meta.join(" · ")));
    const later = [...state.tips.keys()].filter((n) => n > tipNo).sort((a, b) => a - b)[0];
    ui.tipsList.insertBefore(card, later === undefined ? null : state.tips.get(later));
    state.tips.set(tipNo, card);
    ui.tips.hidden = false;
    ui.tipsCount.textContent = `(${state.tips.size})`;
  }

  function dropTip(tipNo) {
    const card = state.tips.get(tipNo);
    if (!card) return;
    card.remove();
    state.tips.delete(tipNo);
    ui.tipsCount.textContent = `(${state.tips.size})`;
    ui.tips.hidden = state.tips.size === 0;
  }

  function onStatus(ws, msg) {
    if (msg.event === "since.beyond") {
      startOver(ws);
      return;
    }
    if (msg.kind === "recording") {
      onRecordingStatus(msg);
      return;
    }
    if (msg.event === "meeting.updated") {
      applyLabels(msg.title, msg.speaker_names);
      return;
    }
    if (msg.event === "segment.corrected") {
      onCorrection(msg);
      return;
    }
    const who = sourceLabel(msg.source);
    let text;
    if (msg.event === "stream.started") {
      text = `${who} started streaming${msg.engine ? ` (engine ${msg.engine})` : ""}`;
    } else if (msg.event === "stream.ended") {
      text = `${who} stream ended`;
      dropPartial(msg.source);
    } else if (msg.event === "engine.switched") {
      const from = msg.previous_engine;
      text = `${who} switched to engine ${msg.engine || "?"}${from ? ` (from ${from})` : ""}`;
      if (msg.reason) text += `: ${msg.reason}`;
    } else if (msg.event === "notes.ready") {
      text = "Meeting notes are ready";
    } else if (msg.event === "language.unsupported") {
      text = `${who} does not sound English; engine ${msg.engine || "?"} transcribes English only`;
    } else {
      text = `${who}: ${msg.event || "status"}`;
    }
    const line = el("li", "status-line");
    line.append(el("time", "", clock(msg.ts)), document.createTextNode(` ${text}`));
    ui.finals.append(line);
    contentChanged(false);
  }

  function onMessage(ws, raw) {
    let msg;
    try {
      msg = JSON.parse(raw);
    } catch {
      return; // not ours to interpret; the protocol only sends JSON
    }
    ws.lastHeard = Date.now();
    switch (msg.type) {
      case "transcript.final":
        if (!ws.live) ws.loaded = (ws.loaded || 0) + 1; // the history, before the pong
        onFinal(msg);
        break;
      case "transcript.partial": onPartial(msg); break;
      case "status": onStatus(ws, msg); break;
      case "ai.tip": onTip(msg); break;
      case "error": ws.lastError = msg; break;
      case "pong":
        if (!ws.live) {
          // The pong follows the history: we are caught up and the subscription is live.
          ws.live = true;
          state.attempt = 0;
          ui.finals.removeAttribute("aria-busy");
          setConnection("live", ws.loaded ? `${ws.loaded} earlier lines loaded` : "");
          if (ws.loaded) ui.historyStatus.textContent = `${ws.loaded} earlier lines loaded`;
          // Back after any break (an outage, or a token pasted after 4401): catch up on edits.
          if (state.wasLive) catchUpEdits();
          state.wasLive = true;
        }
        break;
      default: break; // new message types may appear; ignore what we do not know
    }
  }

  // --- connection ------------------------------------------------------------------------------

  // The status region says the state only, once per change (a screen reader hears "reconnecting"
  // once, not every retry); what is happening (why, the next try) is beside it, not announced.
  const STATE_WORDS = {
    idle: "not connected", connecting: "connecting", live: "live",
    reconnecting: "reconnecting", stopped: "stopped",
  };

  function setConnection(kind, detail) {
    ui.connection.dataset.state = kind;
    const word = STATE_WORDS[kind] || kind;
    if (ui.connectionText.textContent !== word) ui.connectionText.textContent = word;
    ui.connectionDetail.textContent = detail && detail !== word ? detail : "";
  }

  // `announce` false: shown, not read out (the same reason is announced elsewhere, once).
  function showNotice(text, announce = true) {
    if (announce) ui.notice.setAttribute("role", "alert");
    else ui.notice.removeAttribute("role");
    ui.notice.textContent = text;
    ui.notice.hidden = !text;
  }

  function socketUrl() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const query = new URLSearchParams({ token: state.token, since: String(state.heldThrough) });
    return `${scheme}://${location.host}/api/v1/ws/meetings/${encodeURIComponent(state.meeting)}?${query}`;
  }

  function connect() {
    clearTimeout(state.reconnectTimer);
    state.reconnectTimer = 0;
    state.stopped = false;
    if (state.attempt) setConnection("reconnecting", `${state.outage}; trying now…`);
    else setConnection("connecting", "");
    ui.historyStatus.textContent = "";
    let ws;
    try {
      ws = new WebSocket(socketUrl());
    } catch (err) {
      stop(`Cannot open a connection: ${err.message}`);
      return;
    }
    ws.live = false;
    ws.lastHeard = Date.now();
    state.ws = ws;
    ws.onopen = () => {
      // The history (since=) arrives line by line before the subscription is live: a screen
      // reader is told of it once it is all there, not line by line.
      ui.finals.setAttribute("aria-busy", "true");
      ws.send(JSON.stringify({ type: "ping" }));
    };
    ws.onmessage = (event) => onMessage(ws, event.data);
    ws.onclose = (event) => closed(ws, event.code, event.reason);
  }

  function closed(ws, code, reason) {
    if (state.ws !== ws) return;
    state.ws = null;
    ws.onopen = ws.onmessage = ws.onclose = null;
    dropAllPartials(); // their finals come with since= on the next connection
    contentChanged(false);
    if (state.stopped) return;
    const why = (ws.lastError && ws.lastError.message) || reason || "";
    if (code in FINAL_CLOSES) {
      const text = `${FINAL_CLOSES[code]} (${code})${why ? `: ${why}` : ""}.`;
      if (code === 4401 || code === 4403) {
        // The reason once, in the form that asks for another token; the notice names the close.
        stop(`${FINAL_CLOSES[code]} (${code}).`, false);
        askForToken(`${text} Paste another token to continue.`, true);
      } else {
        stop(text);
      }
      return;
    }
    state.attempt += 1;
    const base = code === 4429 ? RECONNECT_RATE_LIMITED_MS : RECONNECT_BASE_MS;
    const ceiling = Math.min(RECONNECT_MAX_MS, base * 2 ** (state.attempt - 1));
    const delay = ceiling / 2 + Math.random() * (ceiling / 2); // jitter: replicas restart together
    // The first close of an outage says why; the failed attempts after it add nothing new.
    if (state.attempt === 1) state.outage = CLOSE_NAMES[code] || `closed ${code}`;
    const retry = state.attempt > 1 ? ` (attempt ${state.attempt})` : "";
    const seconds = Math.max(1, Math.round(delay / 1000));
    setConnection("reconnecting", `${state.outage}; next try in ${seconds} s${retry}`);
    state.reconnectTimer = setTimeout(connect, delay);
  }

  function stop(text, announce = true) {
    state.stopped = true;
    clearTimeout(state.reconnectTimer);
    state.reconnectTimer = 0;
    if (state.ws) {
      const ws = state.ws;
      state.ws = null;
      ws.onopen = ws.onmessage = ws.onclose = null;
      ws.close();
    }
    dropAllPartials();
    ui.finals.removeAttribute("aria-busy");
    setConnection("stopped", "");
    showNotice(text, announce);
  }

  // The token's expiry (its `exp`), or null when it does not say: the gateway ends the
  // connection then (4401), so the captions would stop without warning.
  function tokenExpiry(token) {
    try {
      const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
      const exp = JSON.parse(atob(part.padEnd(Math.ceil(part.length / 4) * 4, "="))).exp;
      return typeof exp === "number" ? exp : null;
    } catch {
      return null;
    }
  }

  // Two minutes before, say so, with a way to paste a new token (the page then resumes where
  // it is on the new one); nothing is interrupted meanwhile.
  function checkExpiry() {
    const exp = state.stopped ? null : tokenExpiry(state.token);
    const left = exp === null ? Infinity : exp - Date.now() / 1000;
    if (left > EXPIRY_WARNING_S) {
      ui.expiry.hidden = true;
      return;
    }
    const minutes = Math.max(1, Math.ceil(left / 60));
    const text = left > 0
      ? `Your viewer token expires in ${minutes} min: paste a new one to keep the captions coming.`
      : "Your viewer token has expired: paste a new one to keep the captions coming.";
    if (ui.expiryText.textContent !== text) ui.expiryText.textContent = text;
    ui.expiry.hidden = false;
  }

  function renewToken() {
    askForToken("Paste a new viewer token; the captions go on meanwhile.");
    ui.joinToken.focus(); // asked for: the field takes the focus
  }

  // A silent network (no close frame, no error) is noticed by our own ping going unanswered.
  function checkLiveness() {
    checkExpiry();
    const ws = state.ws;
    if (!ws) return;
    if (ws.readyState === WebSocket.CONNECTING && Date.now() - ws.lastHeard > OPEN_TIMEOUT_MS) {
      ws.close();
      closed(ws, 1006, "the gateway did not answer");
    }
    if (ws.readyState !== WebSocket.OPEN) return;
    if (Date.now() - ws.lastHeard > PING_EVERY_MS + PING_ANSWER_MS) {
      ws.close();
      closed(ws, 1006, "no answer from the gateway");
    } else if (Date.now() - ws.lastHeard > PING_EVERY_MS) {
      ws.send(JSON.stringify({ type: "ping" }));
    }
  }

  function reconnectNow() {
    if (!state.stopped && !state.ws && state.reconnectTimer) connect();
  }

  // --- exports ---------------------------------------------------------------------------------

  async function download(event) {
    event.preventDefault();
    const link = event.currentTarget;
    if (!state.token || !state.meeting) {
      showNotice("Enter a meeting and a token first.");
      return;
    }
    try {
      const res = await fetch(link.href, {
        headers: { Authorization: `Bearer ${state.token}` },
        cache: "no-store",
        referrerPolicy: "no-referrer",
      });
      if (!res.ok) {
        let message = res.statusText;
        try {
          message = (await res.json()).error.message;
        } catch { /* not a JSON error body */ }
        showNotice(`Download failed (${res.status}): ${message}`);
        return;
      }
      const href = URL.createObjectURL(await res.blob());
      const anchor = el("a");
      anchor.href = href;
      anchor.download = `${state.meeting}.${link.dataset.ext}`;
      document.body.append(anchor);
      anchor.click();
      anchor.remove();
      setTimeout(() => URL.revokeObjectURL(href), 60000);
      if (!state.stopped) showNotice("");
    } catch (err) {
      showNotice(`Download failed: ${err.message}`);
    }
  }

  function setExportLinks() {
    for (const link of document.querySelectorAll(".export")) {
      link.href = `/api/v1/meetings/${encodeURIComponent(state.meeting)}/transcript?format=${link.dataset.format}`;
    }
  }

  // --- start -----------------------------------------------------------------------------------

  function askForToken(reason, refused = false) {
    ui.joinReason.textContent = reason;
    ui.joinMeeting.value = state.meeting;
    // What is being typed there stays (a 4401 arriving while a new token is pasted).
    if (ui.join.hidden) ui.joinToken.value = "";
    markInvalid(ui.joinToken, refused);
    markInvalid(ui.joinMeeting, false);
    ui.join.hidden = false;
    // Not taken from the transcript: a reader there is not pulled away (the reason is
    // announced; the form is the next stop by keyboard).
    if (!ui.scroller.contains(document.activeElement)) {
      (state.meeting ? ui.joinToken : ui.joinMeeting).focus();
    }
  }

  // A field the reason above the form is about: said to be invalid, and described by it.
  function markInvalid(input, invalid) {
    if (invalid) {
      input.setAttribute("aria-invalid", "true");
      input.setAttribute("aria-describedby", input === ui.joinMeeting
        ? "join-reason join-meeting-hint" : "join-reason");
    } else {
      input.removeAttribute("aria-invalid");
      if (input === ui.joinMeeting) input.setAttribute("aria-describedby", "join-meeting-hint");
      else input.removeAttribute("aria-describedby");
    }
  }

  function start() {
    ui.meetingName.textContent = state.meeting || "(no meeting)";
    document.title = `${state.meeting || "Live transcript"} · meeting-gateway`;
    setExportLinks();
    if (!state.meeting || !state.token) {
      setConnection("idle", "not connected");
      askForToken(state.meeting ? "Paste a viewer token to watch this meeting." : "");
      return;
    }
    // Focus in the form (a token pasted, Enter) goes to the transcript, not to the page.
    const hadFocus = ui.join.contains(document.activeElement);
    ui.join.hidden = true;
    if (hadFocus) ui.scroller.focus();
    showNotice("");
    state.attempt = 0;
    state.labelsAsked = false;
    connect();
  }

  // Nothing of the meeting we leave may stay: its lines, tips, recordings, names, title.
  function forgetMeeting() {
    state.finals.clear();
    state.heldThrough = 0;
    state.highest = 0;
    ui.finals.replaceChildren();
    dropAllPartials();
    state.tips.clear();
    ui.tipsList.replaceChildren();
    ui.tipsCount.textContent = "";
    ui.tips.hidden = true;
    ui.recordings.replaceChildren();
    ui.recordingsStatus.textContent = "";
    ui.historyStatus.textContent = "";
    ui.recordings.hidden = true;
    state.names = {};
    state.title = "";
    state.unseen = 0;
    state.wasLive = false;
    state.labelsAsked = false;
    ui.jumpCount.textContent = "";
    ui.jump.hidden = true;
  }

  // The meeting we resumed was deleted and its id used again (since.beyond): what the page
  // shows is not this meeting's. Start it over from its first final, on a fresh subscription.
  function startOver(ws) {
    if (state.ws !== ws) return;
    state.ws = null;
    ws.onopen = ws.onmessage = ws.onclose = null;
    ws.close();
    forgetMeeting();
    applyLabels("", {});
    showNotice("This meeting was deleted and its id used again: showing the new meeting.");
    connect();
  }

  function watch(meeting, token) {
    if (state.ws || state.reconnectTimer) stop("");
    if (meeting !== state.meeting) forgetMeeting();
    state.meeting = meeting;
    state.token = token;
    start();
  }

  function onJoin(event) {
    event.preventDefault();
    const meeting = ui.joinMeeting.value.trim();
    const token = ui.joinToken.value.trim();
    if (!MEETING_ID.test(meeting)) {
      // An id with "/" would not even reach the endpoint (and the browser says only 1006).
      ui.joinReason.textContent = `A meeting id is ${MEETING_ID_RULE}.`;
      markInvalid(ui.joinMeeting, true);
      ui.joinMeeting.focus();
      return;
    }
    // Keep the token in the fragment (never sent to the server) so a reload keeps watching.
    const fragment = new URLSearchParams({ token });
    history.replaceState(null, "", `/viewer?${new URLSearchParams({ meeting })}#${fragment}`);
    watch(meeting, token);
  }

  function onHashChange() {
    // A new URL with another token pasted into the same tab changes only the fragment.
    const token = new URLSearchParams(location.hash.slice(1)).get("token") || "";
    if (token && token !== state.token) watch(state.meeting, token);
  }

  ui.scroller.addEventListener("scroll", onScroll, { passive: true });
  ui.scroller.addEventListener("keydown", onReaderScrollsUp);
  ui.scroller.addEventListener("wheel", onReaderScrollsUp, { passive: true });
  ui.jump.addEventListener("click", jumpToLive);
  ui.join.addEventListener("submit", onJoin);
  ui.expiryRenew.addEventListener("click", renewToken);
  for (const link of document.querySelectorAll(".export")) link.addEventListener("click", download);
  window.addEventListener("online", reconnectNow);
  window.addEventListener("hashchange", onHashChange);
  setInterval(checkLiveness, 1000);
  ui.joinMeetingHint.textContent = `A meeting id is ${MEETING_ID_RULE}.`;
  ui.joinMeeting.addEventListener("input", () => markInvalid(ui.joinMeeting, false));
  ui.joinToken.addEventListener("input", () => markInvalid(ui.joinToken, false));
  start();
})();
