// A small reference chat client for the ServiceNow handoff channel.
// Bot replies come back in the webhook's answer; everything said outside a
// request (agent replies, typing, notices) arrives on the channel's
// Server-Sent Events stream. Each browser tab gets its own conversation id,
// so no tab can read another's messages.
"use strict";

(() => {
  const base = new URL(".", window.location.href);  // .../webhooks/servicenow/
  const webhookUrl = new URL("webhook", base);
  const typingUrl = new URL("typing", base);

  // With `jwt_key` set on the channel, the page needs a token whose subject
  // is the conversation: `window.SERVICENOW_CHAT_TOKEN`, set by the embedding
  // page, or `#token=<jwt>` in the URL (a fragment never reaches a server log).
  const token = window.SERVICENOW_CHAT_TOKEN || new URLSearchParams(window.location.hash.slice(1)).get("token");
  const authHeaders = token ? { Authorization: `Bearer ${token}` } : {};

  // The conversation: the token's subject; else `?sender=<id>` in the URL (to
  // open a given conversation, e.g. the same one on another replica); else
  // the one this tab already has; else a new one, which the bot greets.
  const senderKey = "servicenow-webchat-sender";
  const requested = new URLSearchParams(window.location.search).get("sender");
  const known = (token && subjectOf(token)) || requested || sessionStorage.getItem(senderKey);
  const sender = known || newSenderId();
  sessionStorage.setItem(senderKey, sender);
  // What a new conversation starts with, as rasa-webchat's `initPayload`: the
  // bot speaks first. `window.SERVICENOW_CHAT_INIT_PAYLOAD = ""` turns it off.
  const initPayload = window.SERVICENOW_CHAT_INIT_PAYLOAD ?? "/greet";

  const ui = {
    root: document.querySelector(".chat"),
    messages: document.querySelector('[data-testid="messages"]'),
    status: document.querySelector('[data-testid="status"]'),
    avatar: document.querySelector(".chat__avatar"),
    live: document.querySelector('[data-testid="live-marker"]'),
    liveAgent: document.querySelector('[data-testid="live-agent"]'),
    typing: document.querySelector('[data-testid="typing"]'),
    form: document.querySelector('[data-testid="composer"]'),
    input: document.querySelector('[data-testid="message-input"]'),
    send: document.querySelector('[data-testid="send"]'),
    end: document.querySelector('[data-testid="end-chat"]'),
    attach: document.querySelector('[data-testid="attach"]'),
  };

  const handoff = { active: false, agentName: null };
  let userTypingTimer = null;
  let userTyping = false;

  function subjectOf(jwt) {
    try {
      const payload = jwt.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
      const bytes = Uint8Array.from(atob(payload), (char) => char.charCodeAt(0));
      return JSON.parse(new TextDecoder().decode(bytes)).sub || null;
    } catch (error) {
      return null;
    }
  }

  function newSenderId() {
    if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
    const bytes = crypto.getRandomValues(new Uint8Array(16));
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  // -- rendering ------------------------------------------------------------
  // Everything an agent sends is shown as text (textContent, never innerHTML:
  // an OutputHtml item's markup is not rendered), and a link or an image only
  // when its URL is http(s): a javascript: or data: URL from an agent (or from
  // anyone who can post to the callback route) must not run here.

  function safeUrl(value) {
    if (typeof value !== "string" || !value) return null;
    try {
      const url = new URL(value, window.location.href);
      return url.protocol === "https:" || url.protocol === "http:" ? url.href : null;
    } catch (_) {
      return null;
    }
  }

  function render(author, message) {
    const item = document.createElement("li");
    item.className = `message message--${author}`;
    item.dataset.testid = "message";
    item.dataset.author = author;
    if (author === "agent" && message.metadata && message.metadata.agent_name) {
      const name = document.createElement("span");
      name.className = "message__author";
      name.textContent = String(message.metadata.agent_name);
      item.append(name);
    }
    if (message.text) item.append(document.createTextNode(String(message.text)));
    const waitTime = message.metadata && message.metadata.wait_time;
    if (waitTime) item.append(document.createTextNode(` (about ${waitTime})`));
    const imageUrl = safeUrl(message.image);
    if (imageUrl) {
      const image = document.createElement("img");
      image.src = imageUrl;
      image.alt = message.text || "image";
      item.append(image);
    }
    const attachmentUrl = safeUrl(message.attachment);
    if (attachmentUrl) {
      const link = document.createElement("a");
      link.href = attachmentUrl;
      link.target = "_blank";
      link.rel = "noopener noreferrer";
      link.textContent = message.text ? " ↗" : attachmentUrl;
      item.append(link);
    }
    if (Array.isArray(message.buttons) && message.buttons.length) {
      const row = document.createElement("div");
      row.className = "message__buttons";
      for (const button of message.buttons) {
        if (!button || typeof button !== "object") continue;
        const chip = document.createElement("button");
        chip.type = "button";
        chip.className = "message__button";
        chip.textContent = String(button.title);
        chip.addEventListener("click", () => say(String(button.payload || button.title), String(button.title)));
        row.append(chip);
      }
      item.append(row);
    }
    ui.messages.append(item);
    item.scrollIntoView({ block: "end" });
  }

  function authorOf(message) {
    const source = message.metadata && message.metadata.source;
    if (source === "agent") return "agent";
    if (source === "system") return "system";
    return "bot";
  }

  function showHandoff(active, agentName) {
    handoff.active = active;
    if (agentName) handoff.agentName = agentName;
    if (!active) handoff.agentName = null;
    const connected = active && handoff.agentName;
    ui.root.classList.toggle("chat--live", Boolean(connected));
    ui.live.hidden = !active;
    ui.end.hidden = !active;
    ui.liveAgent.textContent = connected ? `Live agent: ${handoff.agentName}` : "Connecting to an agent…";
    ui.status.textContent = active ? "Human support" : "Virtual assistant";
    ui.avatar.textContent = connected ? initials(handoff.agentName) : "VA";
    if (!active) showTyping(false);
  }

  function initials(name) {
    return String(name).split(/\s+/).filter(Boolean).slice(0, 2).map((part) => part[0].toUpperCase()).join("");
  }

  function showTyping(typing) {
    ui.typing.hidden = !typing;
    ui.typing.textContent = typing ? `${handoff.agentName || "The agent"} is typing…` : "";
  }

  // -- talking to the channel -----------------------------------------------

  // `shown` null: nothing is shown for the user (the greeting's payload).
  async function say(text, shown = text, attachment = null) {
    if (!text.trim() && !attachment) return;
    if (shown !== null) {
      render("user", attachment ? { text: shown || attachment.name, attachment: attachment.url } : { text: shown });
    }
    stopUserTyping();
    ui.send.disabled = true;
    try {
      const response = await fetch(webhookUrl, {
        method: "POST",
        headers: { "Content-Type": "application/json", ...authHeaders },
        body: JSON.stringify(attachment ? { sender, message: text, attachment } : { sender, message: text }),
      });
      const replies = await response.json();
      if (!response.ok) {
        render("system", { text: replies.message || "The message could not be sent." });
        return;
      }
      for (const reply of replies) render(authorOf(reply), reply);
    } catch (error) {
      render("system", { text: "The assistant cannot be reached. Please try again." });
    } finally {
      ui.send.disabled = false;
      ui.input.focus();
    }
  }

  function sendTyping(typing) {
    if (!handoff.active || typing === userTyping) return;
    userTyping = typing;
    fetch(typingUrl, {
      method: "POST",
      headers: { "Content-Type": "application/json", ...authHeaders },
      body: JSON.stringify({ sender, typing }),
    }).catch(() => {});
  }

  function stopUserTyping() {
    clearTimeout(userTypingTimer);
    sendTyping(false);
  }

  function listen() {
    // EventSource cannot set headers: the token goes in the query.
    const query = `sender=${encodeURIComponent(sender)}` + (token ? `&token=${encodeURIComponent(token)}` : "");
    const stream = new EventSource(new URL(`stream?${query}`, base));
    stream.addEventListener("message", (event) => {
      const message = JSON.parse(event.data);
      const author = authorOf(message);
      if (author === "agent") {
        showTyping(false);
        if (handoff.active && message.metadata.agent_name) showHandoff(true, message.metadata.agent_name);
      }
      render(author, message);
    });
    stream.addEventListener("typing", (event) => showTyping(JSON.parse(event.data).typing));
    stream.addEventListener("handoff", (event) => {
      const status = JSON.parse(event.data).handoff;
      showHandoff(status.active, status.agent_name);
    });
    // EventSource reconnects by itself and resumes with Last-Event-ID.
  }

  ui.form.addEventListener("submit", (event) => {
    event.preventDefault();
    const text = ui.input.value;
    ui.input.value = "";
    say(text);
  });

  ui.input.addEventListener("input", () => {
    if (!handoff.active) return;
    sendTyping(true);
    clearTimeout(userTypingTimer);
    userTypingTimer = setTimeout(() => sendTyping(false), 2000);
  });

  ui.end.addEventListener("click", () => say("/end_chat", "End chat"));

  // A file by URL (this page has no upload storage of its own): the type is
  // guessed from the name; the channel checks it during a handoff.
  const TYPES = { png: "image/png", jpg: "image/jpeg", jpeg: "image/jpeg", gif: "image/gif", webp: "image/webp",
    pdf: "application/pdf", txt: "text/plain", csv: "text/csv" };
  ui.attach.addEventListener("click", () => {
    const url = safeUrl((window.prompt("URL of the file to send:") || "").trim());
    if (!url) return;
    const name = decodeURIComponent(new URL(url).pathname.split("/").pop() || "file");
    const extension = name.includes(".") ? name.split(".").pop().toLowerCase() : "";
    const text = ui.input.value;
    ui.input.value = "";
    say(text, text, { url, name, content_type: TYPES[extension] || "application/octet-stream" });
  });

  listen();
  if (!known && initPayload) say(initPayload, null);
  ui.input.focus();
})();
