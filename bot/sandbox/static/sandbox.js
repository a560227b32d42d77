// The sandbox page: plays Slack's client for one channel.
//
// It renders the Block Kit messages Slipway really sent (from GET /api/state,
// long-polled) and turns what the person does into requests to the sandbox,
// which sends them to Slipway signed, as Slack would. No build step, no
// library, nothing from the network: the machine may be offline.
//
// Every piece of text is escaped before it is formatted: alert summaries come
// from monitors, commands from whoever types them, and neither may become HTML.
"use strict";

const PERSON_KEY = "slipway-sandbox-person";
const EMOJI = {
  white_check_mark: "✅", heavy_check_mark: "✔️", x: "❌", heavy_multiplication_x: "✖️", warning: "⚠️",
  rocket: "🚀", mag: "🔍", large_green_circle: "🟢", large_orange_circle: "🟠", red_circle: "🔴",
  large_blue_circle: "🔵", white_circle: "⚪", hourglass_flowing_sand: "⏳", hourglass: "⌛", no_entry: "⛔",
  rewind: "⏪", fast_forward: "⏩", white_large_square: "⬜", rotating_light: "🚨", information_source: "ℹ️",
  lock: "🔒", unlock: "🔓", bell: "🔔", tada: "🎉", ship: "🚢", fire: "🔥", eyes: "👀", thumbsup: "👍",
  "+1": "👍", "-1": "👎", thumbsdown: "👎", wave: "👋", memo: "📝", clipboard: "📋", package: "📦",
  stopwatch: "⏱️", calendar: "📅", link: "🔗", bug: "🐛", construction: "🚧", sparkles: "✨",
  checkered_flag: "🏁", pushpin: "📌", bulb: "💡", hammer_and_wrench: "🛠️", gear: "⚙️", zap: "⚡",
  octagonal_sign: "🛑", black_square_for_stop: "⏹️", double_vertical_bar: "⏸️", arrow_forward: "▶️", bread: "🍞",
  snowflake: "❄️", card_file_box: "🗃️", grey_question: "❔", ballot_box_with_check: "☑️",
  arrows_counterclockwise: "🔄",
};
const AVATAR_COLOURS = 5;  // .avatar.colour-0 … colour-4 in sandbox.css (no inline styles: see the CSP)

const page = {
  me: localStorage.getItem(PERSON_KEY) || "U0DANA",
  data: null,
  revision: -1,
  controls: [],        // what each rendered button or checkbox does, by index
  threads: {},         // thread ts -> "all" or "closed", once the person chose
  poll: null,          // the AbortController of the state request in flight
  highlight: null,     // ts of the message a followed permalink pointed at
};

// -- text --------------------------------------------------------------------------------

function esc(text) {
  return String(text ?? "").replace(/[&<>"']/g, (c) => ({
    "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;",
  })[c]);
}

// Slack escapes exactly three characters in message text; undo that before
// escaping for HTML ("&amp;lt;" is a literal "&lt;").
function unslack(text) {
  return String(text ?? "").replace(/&lt;/g, "<").replace(/&gt;/g, ">").replace(/&amp;/g, "&");
}

function emoji(html) {
  return html.replace(/:([a-z0-9_+-]+):/g, (whole, name) => EMOJI[name] || whole);
}

function plainText(object) {
  if (!object) return "";
  const html = esc(object.text);
  return object.emoji === false ? html : emoji(html);
}

function textObject(object) {
  if (!object) return "";
  return object.type === "mrkdwn" ? mrkdwn(object.text) : plainText(object);
}

// Slack's mrkdwn, to safe HTML. Code and <…> controls are rendered first and
// set aside; the rest is decoded, HTML-escaped, then formatted.
function mrkdwn(source) {
  const kept = [];
  const keep = (html) => `\u0000${kept.push(html) - 1}\u0000`;
  let text = String(source ?? "").replace(/\u0000/g, "");
  text = text.replace(/```([\s\S]*?)```/g, (_, code) => keep(`<pre class="md-pre">${esc(unslack(code.replace(/^\n/, "")))}</pre>`));
  text = text.replace(/`([^`\n]+)`/g, (_, code) => keep(`<code class="md-code">${esc(unslack(code))}</code>`));
  text = text.replace(/<([^<>\n]*)>/g, (_, inside) => keep(control(inside)));
  let html = esc(unslack(text));
  html = html.replace(/(^|[^\w*])\*(?=\S)([^*\n]*?\S)\*(?![\w*])/g, "$1<strong>$2</strong>");
  html = html.replace(/(^|[^\w_])_(?=\S)([^_\n]*?\S)_(?![\w_])/g, "$1<em>$2</em>");
  html = html.replace(/(^|[^\w~])~(?=\S)([^~\n]*?\S)~(?![\w~])/g, "$1<del>$2</del>");
  html = html.replace(/^&gt; ?(.*)$/gm, '<span class="md-quote">$1</span>');
  html = emoji(html).replace(/\n/g, "<br>");
  return html.replace(/\u0000(\d+)\u0000/g, (_, index) => kept[Number(index)]);
}

// One <…> sequence: a mention, a channel, a date, or a link.
function control(inside) {
  const [target, ...rest] = inside.split("|");
  const label = rest.join("|");
  const directory = page.data ? page.data.directory : { people: [], channels: {}, usergroups: {} };
  if (/^@[UW]/.test(target)) {
    const person = directory.people.find((p) => p.id === target.slice(1));
    return `<span class="mention">@${esc(person ? person.name : unslack(label) || target.slice(1))}</span>`;
  }
  if (target.startsWith("#C")) {
    const name = directory.channels[target.slice(1)] || unslack(label) || target.slice(1);
    return `<span class="mention">#${esc(name)}</span>`;
  }
  if (target.startsWith("!subteam^")) {
    const handle = directory.usergroups[target.slice(9)] || unslack(label).replace(/^@/, "") || "group";
    return `<span class="mention">@${esc(handle)}</span>`;
  }
  if (target.startsWith("!date^")) return dateText(target, label);
  if (/^!(here|channel|everyone)$/.test(target)) return `<span class="mention">@${esc(target.slice(1))}</span>`;
  const url = unslack(target);
  const shown = esc(unslack(label) || url);
  // a permalink (chat.getPermalink) names a message on this page: go to it, not to a workspace that is not there
  const permalink = url.match(/^https:\/\/[^/]+\.slack\.com\/archives\/[A-Z0-9]+\/p(\d+)(\d{6})$/);
  if (permalink) return `<a href="#" class="permalink" data-goto="${esc(`${permalink[1]}.${permalink[2]}`)}">${shown}</a>`;
  if (!/^(https?:|mailto:)/i.test(url)) return shown;
  return `<a href="${esc(url)}" target="_blank" rel="noopener noreferrer">${shown}</a>`;
}

// <!date^1764000000^{date_short_pretty} at {time}|fallback>, in the reader's time zone.
function dateText(target, fallback) {
  const [, seconds, format] = target.split("^");
  const moment = new Date(Number(seconds) * 1000);
  if (!format || Number.isNaN(moment.getTime())) return esc(unslack(fallback));
  const time = moment.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  const day = dayName(moment);
  const tokens = {
    date_short_pretty: day, date_pretty: day, date_long_pretty: day, time, time_secs: moment.toLocaleTimeString(),
    date_short: moment.toLocaleDateString([], { month: "short", day: "numeric" }),
    date: moment.toLocaleDateString([], { month: "long", day: "numeric", year: "numeric" }),
    date_long: moment.toLocaleDateString([], { weekday: "long", month: "long", day: "numeric", year: "numeric" }),
    date_num: moment.toISOString().slice(0, 10), ago: agoText(moment),
  };
  return esc(format.replace(/\{(\w+)\}/g, (whole, token) => tokens[token] ?? whole));
}

// Slack's {ago}: "3 minutes ago", "2 hours ago", "yesterday"…
function agoText(moment) {
  const seconds = Math.max(0, Math.round((Date.now() - moment.getTime()) / 1000));
  const units = [["day", 86400], ["hour", 3600], ["minute", 60]];
  for (const [unit, size] of units) {
    const count = Math.floor(seconds / size);
    if (count >= 1) return `${count} ${unit}${count === 1 ? "" : "s"} ago`;
  }
  return "just now";
}

function dayName(moment) {
  const today = new Date();
  const yesterday = new Date(today.getTime() - 86400000);
  if (moment.toDateString() === today.toDateString()) return "today";
  if (moment.toDateString() === yesterday.toDateString()) return "yesterday";
  return moment.toLocaleDateString([], { month: "short", day: "numeric" });
}

function clock(seconds) {
  return new Date(seconds * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

// -- Block Kit ---------------------------------------------------------------------------

// `where` says which message the blocks belong to, for the clicks on them:
// {channel, ts} for a message in the channel, {reply: seq} for one shown only to you.
function blocksHtml(blocks, where) {
  return blocks.map((block) => blockHtml(block, where)).join("");
}

function blockHtml(block, where) {
  switch (block.type) {
    case "header":
      return `<div class="bk-header">${plainText(block.text)}</div>`;
    case "section":
      return sectionHtml(block, where);
    case "divider":
      return '<hr class="bk-divider">';
    case "context":
      return `<div class="bk-context">${(block.elements || []).map(contextElement).join("")}</div>`;
    case "actions":
      return `<div class="bk-actions">${(block.elements || []).map((e) => elementHtml(e, block, where)).join("")}</div>`;
    default:
      return `<div class="bk-unsupported">(a ${esc(block.type)} block, which the sandbox does not draw)</div>`;
  }
}

function sectionHtml(block, where) {
  const text = block.text ? `<div class="bk-text">${textObject(block.text)}</div>` : "";
  const fields = block.fields
    ? `<div class="bk-fields">${block.fields.map((f) => `<div class="bk-field">${textObject(f)}</div>`).join("")}</div>`
    : "";
  const accessory = block.accessory ? `<div class="bk-accessory">${elementHtml(block.accessory, block, where)}</div>` : "";
  return `<div class="bk-section${accessory ? " with-accessory" : ""}"><div class="bk-main">${text}${fields}</div>${accessory}</div>`;
}

function contextElement(element) {
  if (element.type === "image") return `<span class="bk-context-image" title="${esc(element.alt_text)}"></span>`;
  return `<span class="bk-context-item">${textObject(element)}</span>`;
}

function elementHtml(element, block, where) {
  const base = { ...where, action_id: element.action_id, block_id: block.block_id || null };
  if (element.type === "button") {
    const index = page.controls.push({ ...base, kind: "button", confirm: element.confirm || null }) - 1;
    const style = element.style === "primary" || element.style === "danger" ? ` ${element.style}` : "";
    return `<button type="button" class="bk-button${style}" data-control="${index}">${plainText(element.text)}</button>`;
  }
  if (element.type === "checkboxes") {
    const index = page.controls.push({ ...base, kind: "checkboxes" }) - 1;
    const ticked = new Set((element.initial_options || []).map((o) => o.value));
    return `<div class="bk-checkboxes">${(element.options || []).map((option) => `
      <label class="bk-checkbox"><input type="checkbox" data-control="${index}" value="${esc(option.value)}"
        ${ticked.has(option.value) ? "checked" : ""}><span>${textObject(option.text)}</span></label>`).join("")}</div>`;
  }
  return `<span class="bk-unsupported">(a ${esc(element.type)}, which the sandbox does not draw)</span>`;
}

// -- the channel -------------------------------------------------------------------------

function personName(id) {
  const person = page.data.directory.people.find((p) => p.id === id);
  return person ? person.name : id;
}

function avatar(name, colour) {
  return `<div class="avatar colour-${colour}">${esc(name.slice(0, 1))}</div>`;
}

function slipwayAvatar() {
  return '<div class="avatar slipway" aria-hidden="true">⛵</div>';
}

function contentHtml(item, where) {
  return item.blocks && item.blocks.length ? blocksHtml(item.blocks, where) : `<div class="bk-text">${mrkdwn(item.text)}</div>`;
}

function messageHtml(message) {
  const where = { channel: page.data.channel.id, ts: message.ts };
  return `<article class="message" data-ts="${esc(message.ts)}">
    ${slipwayAvatar()}
    <div class="message-body">
      <div class="meta"><span class="author">Slipway</span><span class="app-badge">APP</span>
        <time>${clock(message.posted_at)}</time>${message.edited ? '<span class="edited">(edited)</span>' : ""}</div>
      <div class="content">${contentHtml(message, where)}</div>
      ${threadHtml(message)}
    </div>
  </article>`;
}

function asksForDecision(reply) {
  return (reply.blocks || []).some((block) => block.type === "actions");
}

// How a thread shows: "closed", "all" its replies, or "focus": unasked, a
// thread opens by itself at the first reply that asks for a decision (an
// alert with a Roll back button), with the replies before it folded away.
function threadView(message) {
  if (message.ts in page.threads) return page.threads[message.ts];
  return message.replies.some(asksForDecision) ? "focus" : "closed";
}

function threadReplyHtml(reply) {
  const where = { channel: page.data.channel.id, ts: reply.ts };
  return `<div class="reply" data-ts="${esc(reply.ts)}">${slipwayAvatar()}<div class="message-body">
      <div class="meta"><span class="author">Slipway</span><span class="app-badge">APP</span>
        <time>${clock(reply.posted_at)}</time></div>
      <div class="content">${contentHtml(reply, where)}</div></div></div>`;
}

function threadHtml(message) {
  const count = message.replies.length;
  if (!count) return "";
  const view = threadView(message);
  const last = message.replies[count - 1];
  const toggle = `<button type="button" class="thread-toggle" data-thread="${esc(message.ts)}"
      data-show="${view === "closed" ? "all" : "closed"}" aria-expanded="${view !== "closed"}">
      ${count} ${count === 1 ? "reply" : "replies"}</button>
    <span class="thread-last">${view === "closed" ? `Last reply ${clock(last.posted_at)}` : "Hide thread"}</span>`;
  if (view === "closed") return `<div class="thread">${toggle}</div>`;
  const from = view === "focus" ? message.replies.findIndex(asksForDecision) : 0;
  const earlier = from > 0
    ? `<button type="button" class="thread-earlier" data-thread="${esc(message.ts)}" data-show="all">
        Show ${from} earlier ${from === 1 ? "reply" : "replies"}</button>` : "";
  const replies = message.replies.slice(from).map(threadReplyHtml).join("");
  return `<div class="thread open">${toggle}<div class="replies">${earlier}${replies}</div></div>`;
}

function replyHtml(reply) {
  const where = { reply: reply.seq };
  const typed = reply.command
    ? `<div class="typed">${esc(personName(reply.by))} used <code>${esc(reply.command)}</code></div>` : "";
  const only = reply.public ? "" : '<span class="only-you">Only visible to you</span>';
  return `<article class="message ${reply.public ? "" : "ephemeral"}" data-reply="${reply.seq}">
    ${slipwayAvatar()}
    <div class="message-body">
      <div class="meta"><span class="author">Slipway</span><span class="app-badge">APP</span>
        <time>${clock(reply.posted_at)}</time>${only}</div>
      ${typed}
      <div class="content">${contentHtml(reply, where)}</div>
    </div>
  </article>`;
}

// A direct message from Slipway to the person at the page. Slack shows it in
// its own conversation; the page plays one channel, so it shows it here,
// marked, in the order it arrived.
function directHtml(message) {
  const where = { channel: page.data.direct_channel, ts: message.ts };
  return `<article class="message direct" data-dm="${esc(message.ts)}">
    ${slipwayAvatar()}
    <div class="message-body">
      <div class="meta"><span class="author">Slipway</span><span class="app-badge">APP</span>
        <time>${clock(message.posted_at)}</time><span class="only-you">Direct message to you</span></div>
      <div class="content">${contentHtml(message, where)}</div>
    </div>
  </article>`;
}

function render() {
  const data = page.data;
  page.controls = [];
  document.getElementById("channel-name").textContent = data.channel.name;
  document.getElementById("sidebar-channel").textContent = data.channel.name;
  renderPeople();
  renderRunning();
  const timeline = document.getElementById("timeline");
  const atBottom = timeline.scrollHeight - timeline.scrollTop - timeline.clientHeight < 60;
  const items = [
    ...data.messages.map((m) => ({ seq: m.seq, html: () => messageHtml(m) })),
    ...data.replies.map((r) => ({ seq: r.seq, html: () => replyHtml(r) })),
    ...(data.direct || []).map((m) => ({ seq: m.seq, html: () => directHtml(m) })),
  ].sort((a, b) => a.seq - b.seq);
  document.getElementById("messages").innerHTML = items.map((item) => item.html()).join("");
  highlight();
  if (atBottom) timeline.scrollTop = timeline.scrollHeight;
}

function highlight() {
  for (const element of document.querySelectorAll("[data-ts]")) {
    element.classList.toggle("flash", element.dataset.ts === page.highlight);
  }
}

function renderPeople() {
  const people = page.data.directory.people;
  document.getElementById("people").innerHTML = people.map((person, i) => `
    <label class="person${person.id === page.me ? " current" : ""}">
      <input type="radio" name="person" value="${esc(person.id)}" ${person.id === page.me ? "checked" : ""}>
      ${avatar(person.name, i % AVATAR_COLOURS)}
      <span class="person-name">${esc(person.name)}</span><span class="person-role">${esc(person.role)}</span>
    </label>`).join("");
  const me = people.find((p) => p.id === page.me);
  document.getElementById("speaking-as").textContent = me ? `You are ${me.name} (${me.role})` : "";
}

function renderRunning() {
  const service = page.data.service;
  document.getElementById("running").innerHTML = service.running.map((row) => `
    <tr><th>${esc(service.name)} · ${esc(row.environment)}</th><td>${esc(row.version || "—")}${row.canary
      ? `<span class="canary">canary ${esc(row.canary.version)} · ${esc(row.canary.weight)}%</span>` : ""}</td></tr>`)
    .join("");
}

// -- talking to the sandbox --------------------------------------------------------------

async function poll() {
  for (;;) {
    page.poll = new AbortController();
    const query = `user=${encodeURIComponent(page.me)}&since=${page.revision}`;
    try {
      const answer = await fetch(`/api/state?${query}`, { signal: page.poll.signal, cache: "no-store" });
      if (!answer.ok) throw new Error((await answer.json()).error || `HTTP ${answer.status}`);
      page.data = await answer.json();
      page.revision = page.data.revision;
      document.getElementById("offline").hidden = true;
      render();
    } catch (error) {
      if (error.name === "AbortError") continue;  // the person changed: ask again at once
      document.getElementById("offline").hidden = false;
      await new Promise((resume) => setTimeout(resume, 2000));
    }
  }
}

async function send(path, body) {
  try {
    const answer = await fetch(path, {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
    });
    const result = await answer.json();
    if (!answer.ok) throw new Error(result.error || `HTTP ${answer.status}`);
    return result;
  } catch (error) {
    toast(`Not sent: ${error.message}`);
    return null;
  }
}

function toast(text) {
  const box = document.getElementById("toast");
  box.textContent = text;
  box.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { box.hidden = true; }, 6000);
}

function click(control, selected) {
  const body = { user: page.me, action_id: control.action_id, block_id: control.block_id };
  if (control.reply !== undefined) body.reply = control.reply;
  else Object.assign(body, { channel: control.channel, ts: control.ts });
  if (selected !== undefined) body.selected = selected;
  return send("/api/click", body);
}

// Slack asks before a button with a `confirm` object is sent; so do we.
function confirmThen(confirm, action) {
  const dialog = document.getElementById("confirm");
  document.getElementById("confirm-title").innerHTML = plainText(confirm.title);
  document.getElementById("confirm-text").innerHTML = textObject(confirm.text);
  const ok = document.getElementById("confirm-ok");
  ok.innerHTML = plainText(confirm.confirm || { text: "Yes" });
  ok.className = `ok${confirm.style === "danger" ? " danger" : ""}`;
  document.getElementById("confirm-deny").innerHTML = plainText(confirm.deny || { text: "Cancel" });
  dialog.onclose = () => { if (dialog.returnValue === "ok") action(); };
  dialog.returnValue = "";
  dialog.showModal();
}

function wire() {
  document.addEventListener("click", (event) => {
    const button = event.target.closest("button[data-control]");
    if (button) {
      document.getElementById("toast").hidden = true;
      const control = page.controls[Number(button.dataset.control)];
      if (control.confirm) confirmThen(control.confirm, () => click(control));
      else click(control);
      return;
    }
    const link = event.target.closest("a[data-goto]");
    if (link) {
      event.preventDefault();
      const target = document.querySelector(`[data-ts="${CSS.escape(link.dataset.goto)}"]`);
      if (target) {
        page.highlight = link.dataset.goto;  // marked until the next link is followed (render keeps the mark)
        highlight();
        target.scrollIntoView({ block: "center" });
      } else {
        toast("That message is not on this page.");
      }
      return;
    }
    const toggle = event.target.closest("button[data-thread]");
    if (toggle) {
      page.threads[toggle.dataset.thread] = toggle.dataset.show;
      render();
      return;
    }
    const chip = event.target.closest("button[data-fill]");
    if (chip) {
      const input = document.getElementById("command");
      input.value = chip.dataset.fill;
      input.focus();
    }
  });
  document.addEventListener("change", (event) => {
    const box = event.target;
    if (box.matches("input[type=checkbox][data-control]")) {
      const control = page.controls[Number(box.dataset.control)];
      const group = box.closest(".bk-checkboxes").querySelectorAll("input[type=checkbox]");
      click(control, [...group].filter((b) => b.checked).map((b) => b.value));
    } else if (box.matches("input[name=person]")) {
      page.me = box.value;
      localStorage.setItem(PERSON_KEY, page.me);
      page.revision = -1;
      if (page.data) renderPeople();
      page.poll.abort();
    }
  });
  document.getElementById("confirm-ok").addEventListener("click", () => document.getElementById("confirm").close("ok"));
  document.getElementById("confirm-deny").addEventListener("click", () => document.getElementById("confirm").close("deny"));
  document.getElementById("composer").addEventListener("submit", async (event) => {
    event.preventDefault();
    const input = document.getElementById("command");
    const text = input.value.trim();
    if (!text) return;
    if (await send("/api/command", { user: page.me, text })) input.value = "";
  });
  document.getElementById("simulate-alert").addEventListener("click", async () => {
    const result = await send("/api/alert", {});
    if (result) toast(`Alert sent; Slipway took ${result.received} alert(s).`);
  });
  document.getElementById("fail-canary").addEventListener("click", async () => {
    const result = await send("/api/canary/fail", {});
    if (result) {
      const share = Math.round(result.error_rate * 100);
      toast(`The canary of ${result.version} on ${result.environment} now fails ${share}% of its requests: `
        + "its next measurement will show it.");
    }
  });
}

wire();
poll();
