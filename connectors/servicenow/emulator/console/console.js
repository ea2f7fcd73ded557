// Agent console of the ServiceNow emulator: plays the human agent through the control plane.
//
// Reads:  GET /__emu/inbox (the chat list, every POLL_MS) and GET /__emu/transcript/{session} (the selected chat).
// Writes: POST /__emu/agent/accept | message | typing | close with {"session": <chat.ref>, ...}.
// Every text from the server is rendered with textContent, never as markup.
"use strict";

(() => {
  const BASE = "/__emu";
  const POLL_MS = 700;
  const TYPING_IDLE_MS = 2000;
  const ERROR_MS = 6000;
  const SEEN_KEY = "servicenow-emulator-console:seen";
  const TOKEN_KEY = "servicenow-emulator-console:token";
  // The control token: from the page's address (#token=..., the link the emulator prints), from the page itself when
  // the user typed its address, or from this tab's earlier load. It goes with every call (X-Emulator-Token).
  const TOKEN = readToken();
  // Marks the console's polling GETs so the emulator logs them at DEBUG instead of INFO.
  const POLL_HEADERS = { "X-Emulator-Console": "poll", "X-Emulator-Token": TOKEN };
  const API_LABEL = { connect: "Connect", va: "Virtual Agent" };
  const STATUS_LABEL = { waiting: "Waiting", live: "Live", closed: "Closed" };
  const UNREACHABLE_TEXT = "Emulator not reachable, retrying…";
  const NO_TOKEN_TEXT =
    "No control token: open the console from the link the emulator printed (…/__emu/console#token=…), or type its address.";

  const byId = (id) => document.getElementById(id);
  const el = {
    agentName: byId("agent-name"),
    agentInitials: byId("agent-initials"),
    connection: byId("connection"),
    emptyList: byId("empty-list"),
    groups: { waiting: byId("group-waiting"), live: byId("group-live"), closed: byId("group-closed") },
    lists: { waiting: byId("list-waiting"), live: byId("list-live"), closed: byId("list-closed") },
    counts: { waiting: byId("count-waiting"), live: byId("count-live"), closed: byId("count-closed") },
    none: { waiting: byId("none-waiting"), live: byId("none-live") },
    noSelection: byId("no-selection"),
    conversation: byId("conversation"),
    convInitials: byId("conv-initials"),
    convTitle: byId("conv-title"),
    convApi: byId("conv-api"),
    convStatus: byId("conv-status"),
    convDetail: byId("conv-detail"),
    scroller: byId("scroller"),
    history: byId("history"),
    historyCount: byId("history-count"),
    historyList: byId("history-list"),
    transcript: byId("transcript"),
    typing: byId("typing"),
    composer: byId("composer"),
    waitingBar: byId("waiting-bar"),
    waitingSince: byId("waiting-since"),
    accept: byId("accept"),
    liveComposer: byId("live-composer"),
    reply: byId("reply"),
    noteToggle: byId("note-toggle"),
    workNote: byId("work-note"),
    close: byId("close"),
    send: byId("send"),
    attach: byId("attach"),
    closedBar: byId("closed-bar"),
    closedDetail: byId("closed-detail"),
    error: byId("error"),
  };

  const app = {
    loaded: false,
    agent: { name: "", user_name: "" },
    nowMs: Date.now(),
    chats: new Map(), // id -> chat (GET /__emu/inbox)
    items: new Map(), // id -> list item elements
    selectedId: null,
    view: { id: null, keys: [], nodes: [], historyKey: "" }, // what the transcript pane shows
    seen: loadSeen(), // id -> user messages the agent has seen
    drafts: new Map(), // id -> unsent reply text
    typing: { on: false, ref: null, timer: 0, chain: Promise.resolve() },
    errorTimer: 0,
  };

  // ---- Small helpers ------------------------------------------------------------------------------------------

  function node(tag, className, text) {
    const n = document.createElement(tag);
    if (className) n.className = className;
    if (text !== undefined && text !== null) n.textContent = String(text);
    return n;
  }

  function setText(target, text) {
    const value = text === undefined || text === null ? "" : String(text);
    if (target.textContent !== value) target.textContent = value;
  }

  function setAttr(target, name, value) {
    if (target.getAttribute(name) !== value) target.setAttribute(name, value);
  }

  function show(target, visible) {
    if (target.hidden === visible) target.hidden = !visible;
  }

  function initials(name) {
    const parts = String(name || "?").replace(/[._@-]+/g, " ").trim().split(/\s+/).filter(Boolean);
    const letters = parts.length > 1 ? parts[0][0] + parts[parts.length - 1][0] : (parts[0] || "?").slice(0, 2);
    return letters.toUpperCase();
  }

  function clock(ms) {
    const date = new Date(Number(ms));
    if (Number.isNaN(date.getTime())) return "";
    return date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  }

  function fullTime(ms) {
    const date = new Date(Number(ms));
    return Number.isNaN(date.getTime()) ? "" : date.toLocaleString();
  }

  // "just now", "45 s", "3 min", "2 h", "4 d", on the emulator's clock (it may be frozen or moved).
  function ago(ms) {
    const seconds = Math.max(0, Math.floor((app.nowMs - Number(ms)) / 1000));
    if (seconds < 10) return "just now";
    if (seconds < 60) return `${seconds} s`;
    if (seconds < 3600) return `${Math.floor(seconds / 60)} min`;
    if (seconds < 86400) return `${Math.floor(seconds / 3600)} h`;
    return `${Math.floor(seconds / 86400)} d`;
  }

  function loadSeen() {
    try {
      const raw = JSON.parse(window.localStorage.getItem(SEEN_KEY) || "{}");
      return new Map(Object.entries(raw && typeof raw === "object" ? raw : {}));
    } catch (_) {
      return new Map();
    }
  }

  function saveSeen() {
    try {
      const live = [...app.seen].filter(([id]) => app.chats.has(id));
      window.localStorage.setItem(SEEN_KEY, JSON.stringify(Object.fromEntries(live)));
    } catch (_) {
      // Storage may be unavailable (private mode, file quota): unread markers then last for this page only.
    }
  }

  // ---- Talking to the emulator --------------------------------------------------------------------------------

  function readToken() {
    const fromHash = new URLSearchParams(window.location.hash.slice(1)).get("token");
    if (fromHash) {
      // Out of the address bar (and of what a screen share shows); this tab keeps it.
      window.history.replaceState(null, "", window.location.pathname + window.location.search);
    }
    const meta = document.querySelector('meta[name="emulator-control-token"]');
    let stored = "";
    try {
      stored = window.sessionStorage.getItem(TOKEN_KEY) || "";
    } catch (_) {
      stored = "";
    }
    const token = fromHash || (meta && meta.content) || stored;
    try {
      if (token) window.sessionStorage.setItem(TOKEN_KEY, token);
    } catch (_) {
      // Without storage the token lasts for this page only.
    }
    return token;
  }

  async function getJSON(path) {
    const response = await fetch(BASE + path, { headers: POLL_HEADERS, cache: "no-store" });
    if (!response.ok) {
      const error = new Error(`${response.status} on ${path}`);
      error.status = response.status;
      throw error;
    }
    return response.json();
  }

  async function post(path, body) {
    let response;
    try {
      response = await fetch(`${BASE}/${path}`, {
        method: "POST",
        headers: { "Content-Type": "application/json", Accept: "application/json", "X-Emulator-Token": TOKEN },
        body: JSON.stringify(body),
      });
    } catch (_) {
      throw new Error("The emulator is not reachable.");
    }
    let data = null;
    try {
      data = await response.json();
    } catch (_) {
      data = null;
    }
    if (!response.ok) {
      throw new Error((data && data.error) || `The emulator answered ${response.status}.`);
    }
    return data;
  }

  // ---- Polling ------------------------------------------------------------------------------------------------

  let wake = null;
  let kicked = false;

  // Refresh as soon as possible (after an action), without running two refreshes at once.
  function kick() {
    kicked = true;
    if (wake) wake();
  }

  function pause(ms) {
    return new Promise((resolve) => {
      const timer = window.setTimeout(done, ms);
      function done() {
        window.clearTimeout(timer);
        wake = null;
        resolve();
      }
      wake = done;
    });
  }

  async function pollForever() {
    for (;;) {
      kicked = false;
      await refresh();
      if (!kicked) await pause(POLL_MS);
    }
  }

  async function refresh() {
    let inbox;
    try {
      inbox = await getJSON("/inbox");
    } catch (error) {
      // 403: the emulator wants the control token this page did not get.
      el.connection.textContent = error.status === 403 ? NO_TOKEN_TEXT : UNREACHABLE_TEXT;
      show(el.connection, true);
      return;
    }
    show(el.connection, false);
    applyInbox(inbox);
    const chat = selected();
    if (!chat) return;
    let transcript;
    try {
      transcript = await getJSON(`/transcript/${encodeURIComponent(chat.ref)}`);
    } catch (_) {
      return; // gone meanwhile (reset), or momentarily ambiguous: the next round sorts it out
    }
    const current = selected();
    if (current && current.id === chat.id) applyTranscript(current, transcript);
  }

  // ---- The chat list ------------------------------------------------------------------------------------------

  function selected() {
    return app.selectedId ? app.chats.get(app.selectedId) || null : null;
  }

  function applyInbox(inbox) {
    app.loaded = true;
    app.nowMs = Number(inbox.now_ms) || Date.now();
    if (inbox.agent && inbox.agent.name !== app.agent.name) {
      app.agent = inbox.agent;
      setText(el.agentName, inbox.agent.name);
      setText(el.agentInitials, initials(inbox.agent.name));
    }
    app.chats = new Map((inbox.chats || []).map((chat) => [chat.id, chat]));
    if (app.selectedId && !app.chats.has(app.selectedId)) select(null);
    const current = selected();
    if (current && !document.hidden && (app.seen.get(current.id) || 0) < current.user_messages) {
      app.seen.set(current.id, current.user_messages);
      saveSeen();
    }
    renderList();
    renderHeader();
  }

  function renderList() {
    const groups = { waiting: [], live: [], closed: [] };
    for (const chat of app.chats.values()) (groups[chat.status] || groups.closed).push(chat);
    // Waiting and live keep queue order (nothing jumps under the pointer); closed shows the latest first.
    groups.closed.sort((a, b) => b.updated_ms - a.updated_ms);

    for (const [id, item] of app.items) {
      if (!app.chats.has(id)) {
        item.li.remove();
        app.items.delete(id);
      }
    }
    for (const [status, chats] of Object.entries(groups)) {
      const list = el.lists[status];
      chats.forEach((chat, index) => {
        const item = app.items.get(chat.id) || createItem(chat);
        updateItem(item, chat);
        if (list.children[index] !== item.li) list.insertBefore(item.li, list.children[index] || null);
      });
      setText(el.counts[status], chats.length);
    }

    const total = app.chats.size;
    show(el.emptyList, app.loaded && total === 0);
    show(el.groups.waiting, total > 0);
    show(el.groups.live, total > 0);
    show(el.groups.closed, groups.closed.length > 0);
    show(el.none.waiting, groups.waiting.length === 0);
    show(el.none.live, groups.live.length === 0);

    const waiting = groups.waiting.length;
    const title = waiting ? `(${waiting}) Agent console` : "Agent console";
    if (document.title !== title) document.title = title;
  }

  function createItem(chat) {
    const li = node("li", "chat-item");
    li.setAttribute("data-testid", "chat-item");
    const button = node("button", "chat-item__button");
    button.type = "button";
    const avatar = node("span", "avatar");
    avatar.setAttribute("aria-hidden", "true");
    const body = node("span", "chat-item__body");
    const top = node("span", "chat-item__top");
    const name = node("span", "chat-item__name");
    const time = node("span", "chat-item__time");
    top.append(name, time);
    const meta = node("span", "chat-item__meta");
    const api = node("span", "badge");
    const ident = node("span", "chat-item__ident");
    meta.append(api, ident);
    const previewRow = node("span", "chat-item__preview-row");
    const preview = node("span", "chat-item__preview");
    const dot = node("span", "unread-dot");
    dot.setAttribute("data-testid", "unread");
    dot.setAttribute("aria-label", "unread");
    previewRow.append(preview, dot);
    body.append(top, meta, previewRow);
    button.append(avatar, body);
    li.append(button);
    button.addEventListener("click", () => select(chat.id));
    const item = { li, button, avatar, name, time, api, ident, preview, dot };
    app.items.set(chat.id, item);
    return item;
  }

  function updateItem(item, chat) {
    setAttr(item.li, "data-session", String(chat.session));
    setAttr(item.li, "data-state", chat.status);
    setAttr(item.li, "data-api", chat.api);
    const isSelected = chat.id === app.selectedId;
    item.li.classList.toggle("is-selected", isSelected);
    setAttr(item.button, "aria-current", isSelected ? "true" : "false");
    setText(item.avatar, avatarText(chat));
    setText(item.name, userName(chat));
    setAttr(item.name, "title", chat.conversation_id ? `Conversation ${chat.conversation_id}` : "");
    setText(item.api, API_LABEL[chat.api] || chat.api);
    setText(item.ident, identifier(chat));

    const waiting = chat.status === "waiting";
    setText(item.time, ago(waiting ? chat.started_ms : chat.updated_ms));
    const tooltip = waiting
      ? `Waiting since ${fullTime(chat.started_ms)}`
      : `Last activity ${fullTime(chat.updated_ms)} · started ${fullTime(chat.started_ms)}`;
    setAttr(item.time, "title", tooltip);

    const last = chat.last_message;
    setText(item.preview, last ? previewText(last) : "No messages");
    item.preview.classList.toggle("is-system", !last || last.author === "system");

    const unread = !isSelected && chat.status !== "closed" && chat.user_messages > (app.seen.get(chat.id) || 0);
    item.li.classList.toggle("is-unread", unread);
    show(item.dot, unread);
  }

  // The user as a person expects to see them: the name the channel sent, else the conversation's id.
  function userName(chat) {
    return chat.user_label || chat.requester_name || "User";
  }

  function avatarText(chat) {
    return chat.user_named === false ? "#" : initials(userName(chat));
  }

  function identifier(chat) {
    if (chat.api === "connect") return chat.number || chat.session;
    return chat.session;
  }

  function previewText(last) {
    const text = String(last.text || "").replace(/\s+/g, " ").trim() || "(attachment)";
    if (last.author === "agent") {
      const who = last.sender_name === app.agent.name ? "You" : String(last.sender_name || "Agent").split(" ")[0];
      return `${who}: ${text}`;
    }
    if (last.author === "note") return `Work note: ${text}`;
    return text;
  }

  // ---- Selection and the conversation header --------------------------------------------------------------------

  function select(id) {
    if (id === app.selectedId) return;
    const previous = selected();
    if (previous) app.drafts.set(previous.id, el.reply.value);
    stopTyping();
    hideError();
    app.selectedId = id;
    el.reply.value = (id && app.drafts.get(id)) || "";
    resizeReply();
    resetTranscript();
    const chat = selected();
    if (chat) {
      app.seen.set(chat.id, chat.user_messages);
      saveSeen();
    }
    renderList();
    renderHeader();
    if (chat && chat.status === "live") el.reply.focus();
    kick();
  }

  function renderHeader() {
    const chat = selected();
    show(el.noSelection, !chat);
    show(el.conversation, Boolean(chat));
    if (!chat) return;

    setText(el.convInitials, avatarText(chat));
    setText(el.convTitle, userName(chat));
    setText(el.convApi, API_LABEL[chat.api] || chat.api);
    setText(el.convStatus, STATUS_LABEL[chat.status] || chat.status);
    setAttr(el.convStatus, "class", `status status--${chat.status}`);
    const details = [identifier(chat)];
    // The full id when the title shows a name or a shortened one; for Connect, who opened the chat on the user's behalf.
    if (chat.conversation_id && chat.conversation_id !== identifier(chat)) details.push(`conversation ${chat.conversation_id}`);
    if (chat.api === "connect" && chat.requester_name) details.push(`via ${chat.requester_name}`);
    details.push(`started ${clock(chat.started_ms)}`);
    if (chat.agent && chat.agent.name) details.push(`agent ${chat.agent.name}`);
    setText(el.convDetail, details.join(" · "));

    show(el.waitingBar, chat.status === "waiting");
    show(el.liveComposer, chat.status === "live");
    show(el.closedBar, chat.status === "closed");
    setText(el.waitingSince, waitedText(chat.started_ms));
    setText(el.closedDetail, closedDetail(chat));

    const connect = chat.api === "connect";
    show(el.noteToggle, connect);
    if (!connect && el.workNote.checked) el.workNote.checked = false;
    updateNoteMode();
    if (chat.status !== "live") stopTyping();
  }

  function waitedText(since) {
    const waited = ago(since);
    return waited === "just now" || waited.endsWith(" s")
      ? "In the queue for less than a minute"
      : `In the queue for ${waited}`;
  }

  function closedDetail(chat) {
    if (chat.api === "connect") {
      if (chat.state === 7 || chat.requester_left) return "The requester left the chat.";
      if (chat.state === 8) return "It was abandoned after being idle.";
      return chat.agent ? `Closed by ${chat.agent.name}.` : "";
    }
    return chat.state === "VA" ? "The user is back with the Virtual Agent." : "The conversation has ended.";
  }

  function updateNoteMode() {
    const note = el.workNote.checked && !el.noteToggle.hidden;
    el.composer.classList.toggle("is-note", note);
    const placeholder = note ? "Add a work note (only agents see it)…" : "Type a reply…";
    if (el.reply.placeholder !== placeholder) el.reply.placeholder = placeholder;
  }

  // ---- The transcript -----------------------------------------------------------------------------------------

  function resetTranscript() {
    el.transcript.replaceChildren();
    el.historyList.replaceChildren();
    el.history.open = false;
    show(el.history, false);
    show(el.typing, false);
    app.view = { id: app.selectedId, keys: [], nodes: [], historyKey: "" };
  }

  function authorOf(message, chat) {
    if (message.created_by === "system") return "system";
    if (message.reflected_field === "work_notes") return "note";
    const requester = chat.api === "va" ? chat.userId : chat.requester;
    return message.created_by === requester ? "user" : "agent";
  }

  function applyTranscript(chat, transcript) {
    const messages = Array.isArray(transcript.messages) ? transcript.messages : [];
    const keyOf = (message, index) => String(message.sys_id || `#${index}`);
    const view = app.view;
    const wasAtBottom = nearBottom();
    const first = view.keys.length === 0;
    const samePrefix =
      view.id === chat.id &&
      view.keys.length <= messages.length &&
      view.keys.every((key, index) => key === keyOf(messages[index], index));
    if (!samePrefix) {
      el.transcript.replaceChildren();
      view.keys = [];
      view.nodes = [];
      view.id = chat.id;
    }
    const appended = messages.length > view.keys.length;
    for (let index = view.keys.length; index < messages.length; index += 1) {
      const entry = renderMessage(messages[index], chat);
      el.transcript.append(entry.li);
      view.keys.push(keyOf(messages[index], index));
      view.nodes.push(entry);
    }
    view.nodes.forEach((entry, index) => updateDelivery(entry, messages[index]));

    renderHistory(chat, transcript);
    const typing = chat.api === "va" && chat.status !== "closed" && userIsTyping(transcript);
    const typingChanged = el.typing.hidden === typing;
    show(el.typing, typing);

    if (first || !samePrefix || ((appended || typingChanged) && wasAtBottom)) scrollToBottom();
  }

  // An entry's textContent is the message text alone (tests can compare it exactly): the sender, the time, the
  // delivery status and the "internal" mark are drawn by CSS from data attributes.
  function renderMessage(message, chat) {
    const author = authorOf(message, chat);
    const li = node("li", `msg msg--${author}`);
    li.setAttribute("data-testid", "message");
    li.setAttribute("data-author", author);
    if (message.sys_id) li.setAttribute("data-id", String(message.sys_id));
    li.title = fullTime(message.timestamp);
    const text = String(message.message || "");
    const entry = { li, delivery: author === "agent" && chat.api === "va" };

    if (author === "system") {
      const line = node("div", "msg__system");
      line.append(node("span", "msg__system-text", text));
      li.append(line);
      return entry;
    }
    const name = author === "user" ? userName(chat) : message.sender_name || "Agent";
    li.setAttribute("data-name", String(name));
    li.setAttribute("data-time", clock(message.timestamp));
    const attachments = Array.isArray(message.attachments) ? message.attachments : [];
    // A file sent alone (VA) has no text: no empty bubble above its link.
    if (text || !attachments.length) li.append(node("div", "msg__bubble", text));
    if (attachments.length) {
      const extra = node("div", "msg__extra", "Attachment: ");
      attachments.forEach((attachment, index) => {
        if (index) extra.append(", ");
        const url = attachmentUrl(attachment);
        const link = url ? node("a", "msg__file", attachmentName(attachment)) : node("span", "msg__file", attachmentName(attachment));
        if (url) {
          link.href = url;
          link.target = "_blank";
          link.rel = "noopener noreferrer";
          link.setAttribute("data-testid", "attachment");
        }
        extra.append(link);
      });
      li.append(extra);
    }
    return entry;
  }

  // Only http(s) links: a user's URL must not become a javascript: link in the agent's page.
  function attachmentUrl(attachment) {
    if (!attachment || typeof attachment !== "object") return "";
    const raw = String(attachment.download_link || attachment.url || "");
    if (!raw) return "";
    try {
      const url = new URL(raw, window.location.href);
      return url.protocol === "http:" || url.protocol === "https:" ? url.href : "";
    } catch (_) {
      return "";
    }
  }

  function attachmentName(attachment) {
    if (attachment && typeof attachment === "object") {
      return String(attachment.name || attachment.file_name || attachment.fileName || attachment.url || "file");
    }
    return String(attachment);
  }

  function updateDelivery(entry, message) {
    if (!entry.delivery || !message) return;
    const status = message.delivery_status;
    const text = status === "sent_to_user" ? "Delivered" : status === "external_error" ? "Not delivered" : "";
    if (text) setAttr(entry.li, "data-delivery", text);
    else if (entry.li.hasAttribute("data-delivery")) entry.li.removeAttribute("data-delivery");
  }

  // The history the bot sent with the handoff (VA ``history``: displayName, isBotMessage, timestamp, value).
  function renderHistory(chat, transcript) {
    const history = chat.api === "va" && Array.isArray(transcript.history) ? transcript.history : [];
    const key = `${chat.id}:${history.length}`;
    if (key === app.view.historyKey) return;
    app.view.historyKey = key;
    el.historyList.replaceChildren(...history.map(renderHistoryEntry));
    setText(el.historyCount, `${history.length} message${history.length === 1 ? "" : "s"}`);
    show(el.history, history.length > 0);
  }

  function renderHistoryEntry(entry) {
    const item = entry && typeof entry === "object" ? entry : { value: entry };
    const bot = Boolean(item.isBotMessage);
    const li = node("li", `hmsg ${bot ? "hmsg--bot" : "hmsg--user"}`);
    li.setAttribute("data-testid", "history-message");
    li.setAttribute("data-author", bot ? "bot" : "user");
    const who = node("div", "hmsg__who", item.displayName || (bot ? "Virtual Agent" : "User"));
    if (item.timestamp) who.append(node("time", "", clock(item.timestamp)));
    let value = item.value !== undefined ? item.value : item.text !== undefined ? item.text : item.message;
    if (value !== null && typeof value === "object") value = JSON.stringify(value);
    li.append(who, node("div", "hmsg__text", value === undefined ? "" : value));
    return li;
  }

  // TYPING says the user types, VIEWING (or a message) that they stopped: the latest of them, in arrival order.
  function userIsTyping(transcript) {
    let typing = false;
    for (const request of Array.isArray(transcript.requests) ? transcript.requests : []) {
      const action = request.action;
      const message = request.body && request.body.message;
      if (action === "TYPING") typing = true;
      else if (action === "VIEWING" || action === "END_CONVERSATION" || action === "FAULT_CONVERSATION") typing = false;
      else if (action !== "UPDATE_MESSAGES" && message && typeof message === "object" && !Array.isArray(message)) {
        if (message.text || message.attachment) typing = false;
      }
    }
    return typing;
  }

  function nearBottom() {
    const s = el.scroller;
    return s.scrollHeight - s.scrollTop - s.clientHeight < 48;
  }

  function scrollToBottom() {
    el.scroller.scrollTop = el.scroller.scrollHeight;
  }

  // ---- Actions ------------------------------------------------------------------------------------------------

  // One action per button at a time: the button stays disabled until the emulator has answered.
  async function run(button, action) {
    button.disabled = true;
    hideError();
    try {
      await action();
    } catch (error) {
      showError(error.message || String(error));
    } finally {
      button.disabled = false;
      kick();
    }
  }

  function accept() {
    const chat = selected();
    if (!chat || chat.status !== "waiting" || el.accept.disabled) return;
    run(el.accept, async () => {
      await post("agent/accept", { session: chat.ref });
      window.requestAnimationFrame(() => el.reply.focus());
    });
  }

  function closeChat() {
    const chat = selected();
    if (!chat || chat.status !== "live" || el.close.disabled) return;
    run(el.close, async () => {
      await stopTyping();
      await post("agent/close", { session: chat.ref });
    });
  }

  function send() {
    const chat = selected();
    const text = el.reply.value.trim();
    if (!chat || chat.status !== "live" || !text || el.send.disabled) return;
    const workNote = chat.api === "connect" && el.workNote.checked;
    // Clear at once (the agent may keep typing); put the text back if the emulator refuses it.
    el.reply.value = "";
    app.drafts.delete(chat.id);
    resizeReply();
    run(el.send, async () => {
      try {
        await stopTyping();
        await post("agent/message", { session: chat.ref, text, work_note: workNote });
      } catch (error) {
        if (app.selectedId === chat.id && !el.reply.value) {
          el.reply.value = text;
          resizeReply();
        }
        throw error;
      }
      scrollToBottom();
    });
  }

  // A file for the user: read here, sent base64 to the control plane, which stores it and serves it at a URL.
  function sendFile() {
    const chat = selected();
    const file = el.attach.files && el.attach.files[0];
    el.attach.value = "";
    if (!chat || chat.status !== "live" || !file) return;
    run(el.send, async () => {
      const data = await new Promise((resolve, reject) => {
        const reader = new FileReader();
        reader.onload = () => resolve(String(reader.result).replace(/^data:[^,]*,/, ""));
        reader.onerror = () => reject(new Error(`Could not read ${file.name}`));
        reader.readAsDataURL(file);
      });
      const contentType = file.type || "application/octet-stream";
      await post("agent/message", {
        session: chat.ref,
        attachment: { name: file.name, content_type: contentType, data_base64: data },
      });
      scrollToBottom();
    });
  }

  // Agent typing for Virtual Agent chats: "on" once when typing starts, "off" after TYPING_IDLE_MS without a key,
  // when the box is emptied, on send, close or switching chats. Calls go out one after another, in order.
  function queueTyping(ref, on) {
    const call = () => post("agent/typing", { session: ref, on }).catch(() => {});
    app.typing.chain = app.typing.chain.then(call, call);
    return app.typing.chain;
  }

  function agentTyped() {
    const chat = selected();
    if (!chat || chat.api !== "va" || chat.status !== "live") return;
    if (!el.reply.value.trim()) {
      stopTyping();
      return;
    }
    if (!app.typing.on || app.typing.ref !== chat.ref) {
      if (app.typing.on) stopTyping();
      app.typing.on = true;
      app.typing.ref = chat.ref;
      queueTyping(chat.ref, true);
    }
    window.clearTimeout(app.typing.timer);
    app.typing.timer = window.setTimeout(stopTyping, TYPING_IDLE_MS);
  }

  function stopTyping() {
    window.clearTimeout(app.typing.timer);
    if (!app.typing.on) return app.typing.chain;
    const ref = app.typing.ref;
    app.typing.on = false;
    app.typing.ref = null;
    return queueTyping(ref, false);
  }

  function showError(text) {
    setText(el.error, text);
    show(el.error, true);
    window.clearTimeout(app.errorTimer);
    app.errorTimer = window.setTimeout(hideError, ERROR_MS);
  }

  function hideError() {
    window.clearTimeout(app.errorTimer);
    show(el.error, false);
  }

  function resizeReply() {
    el.reply.style.height = "auto";
    el.reply.style.height = `${Math.min(el.reply.scrollHeight + 2, 200)}px`;
  }

  // ---- Wiring -------------------------------------------------------------------------------------------------

  el.accept.addEventListener("click", accept);
  el.close.addEventListener("click", closeChat);
  el.send.addEventListener("click", send);
  el.attach.addEventListener("change", sendFile);
  el.workNote.addEventListener("change", () => {
    updateNoteMode();
    if (el.workNote.checked) stopTyping();
    el.reply.focus();
  });
  el.reply.addEventListener("input", () => {
    if (app.selectedId) app.drafts.set(app.selectedId, el.reply.value);
    resizeReply();
    agentTyped();
  });
  el.reply.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      send();
    }
  });
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden) kick();
  });
  window.addEventListener("pagehide", () => {
    // A typing indicator must not outlive the page.
    if (app.typing.on && navigator.sendBeacon) {
      navigator.sendBeacon(`${BASE}/agent/typing`, JSON.stringify({ session: app.typing.ref, on: false }));
      app.typing.on = false;
    }
  });

  pollForever();
})();
