// The webfon: login, then a softphone over sip.js (phone.js). Plain ES modules, no build.
import { api } from "./api.js";
import { pickLang, translator } from "./i18n.js";
import { Phone } from "./phone.js";

const $ = (id) => document.getElementById(id);
const KEYS = [["1", ""], ["2", "ABC"], ["3", "DEF"], ["4", "GHI"], ["5", "JKL"], ["6", "MNO"],
  ["7", "PQRS"], ["8", "TUV"], ["9", "WXYZ"], ["*", ""], ["0", "+"], ["#", ""]];

const state = {
  config: {}, lang: "es", t: translator("es"), session: null, phone: null,
  lastEnd: null, // { text, at } shown in the status until something happens
  transferFrom: null, consultation: null, timer: null, dtmf: "",
};

// ---- language ----------------------------------------------------------------------------
function applyLang() {
  const t = state.t;
  document.documentElement.lang = state.lang;
  for (const el of document.querySelectorAll("[data-i18n]")) el.textContent = t(el.dataset.i18n);
  for (const el of document.querySelectorAll("[data-i18n-label]")) el.setAttribute("aria-label", t(el.dataset.i18nLabel));
  for (const el of document.querySelectorAll("[data-i18n-label].icon, [data-i18n-label].round")) el.title = t(el.dataset.i18nLabel);
  $("lang-select").value = state.lang;
}

function setLang(lang) {
  state.lang = lang;
  state.t = translator(lang);
  const url = new URL(location.href);
  url.searchParams.set("lang", lang);
  history.replaceState(null, "", url);
  applyLang();
  render();
}

// ---- devices, remembered per user ------------------------------------------------------------
function prefsKey() { return `webfon.devices.${state.session ? state.session.user : "anon"}`; }
function loadPrefs() { try { return JSON.parse(localStorage.getItem(prefsKey())) || {}; } catch { return {}; } }
function savePrefs(prefs) { localStorage.setItem(prefsKey(), JSON.stringify({ input: prefs.input || "", output: prefs.output || "" })); }

async function fillDevices() {
  const t = state.t;
  let devices = [];
  try { devices = await navigator.mediaDevices.enumerateDevices(); } catch { devices = []; }
  const prefs = state.phone ? state.phone.prefs : loadPrefs();
  for (const [selectId, kind, key] of [["mic-select", "audioinput", "input"], ["speaker-select", "audiooutput", "output"]]) {
    const select = $(selectId);
    select.replaceChildren(new Option(t("defaultDevice"), ""));
    devices.filter((d) => d.kind === kind && d.deviceId !== "default").forEach((d, i) => {
      select.append(new Option(d.label || `${t(key === "input" ? "microphone" : "speaker")} ${i + 1}`, d.deviceId));
    });
    select.value = prefs[key] || "";
  }
  $("speaker-select").disabled = typeof HTMLMediaElement.prototype.setSinkId !== "function";
}

// ---- login ---------------------------------------------------------------------------------
async function showLogin(message = "") {
  $("phone-view").hidden = true;
  $("login-view").hidden = false;
  $("login-error").textContent = message;
  $("login-title").textContent = state.config.title || "VIVAit Call Web";
  $("login-user").focus();
}

async function onLogin(event) {
  event.preventDefault();
  const t = state.t;
  const user = $("login-user").value.trim();
  const password = $("login-password").value;
  $("login-error").textContent = "";
  $("login-btn").disabled = true;
  try {
    const { status, data } = await api.login(user, password, state.lang);
    if (status === 200) {
      $("login-password").value = "";
      await startPhone(data);
      return;
    }
    $("login-error").textContent = status === 401 ? t("loginFailed")
      : status === 429 ? t("loginBanned") : t("loginError", { reason: data.error || status });
  } catch (error) {
    $("login-error").textContent = t("loginError", { reason: error.message || error });
  } finally {
    $("login-btn").disabled = false;
  }
}

async function onLogout() {
  if (state.phone) await state.phone.stop();
  state.phone = null;
  state.session = null;
  await api.logout();
  state.lastEnd = null;
  showLogin();
}

// ---- the phone -------------------------------------------------------------------------------
async function startPhone(session) {
  state.session = session;
  state.config = session.config || state.config;
  $("login-view").hidden = true;
  $("phone-view").hidden = false;
  $("who-name").textContent = session.name || session.user;
  $("who-ext").textContent = `${session.user} · ${state.t("extension", { ext: session.extension })}`;
  renderSmartButtons();
  const phone = new Phone(session, loadPrefs());
  state.phone = phone;
  phone.addEventListener("registration", () => render());
  phone.addEventListener("calls", () => render());
  phone.addEventListener("ended", (event) => {
    const { call, reason } = event.detail;
    const t = state.t;
    const failed = !call.answeredAt && call.direction === "out";
    state.lastEnd = { text: failed ? t("failed", { reason: t(reason || "unavailable") }) : t("ended"), at: Date.now() };
    if (state.consultation === call) state.consultation = null;
    if (state.transferFrom === call) { state.transferFrom = null; $("transfer-panel").hidden = true; }
    render();
  });
  phone.addEventListener("error", (event) => {
    state.lastEnd = { text: state.t("failed", { reason: event.detail }), at: Date.now() };
    render();
  });
  render();
  try {
    await phone.start();
  } catch (error) {
    const missing = /import|module|fetch/i.test(String(error && error.message));
    state.lastEnd = { text: state.t("failed", { reason: missing ? state.t("sipMissing") : state.t("registration") }), at: Date.now() };
    console.error(error);
  }
  render();
  fillDevices();
}

function renderSmartButtons() {
  const box = $("smart");
  box.replaceChildren();
  for (const button of state.config.smart_buttons || []) {
    const el = document.createElement("button");
    el.type = "button";
    el.className = "chip";
    el.dataset.dial = button.dial;
    el.textContent = button.label;
    el.title = `${button.label} (${button.dial})`;
    el.addEventListener("click", () => dial(button.dial));
    box.append(el);
  }
  box.hidden = !box.children.length;
}

function validNumber(number) {
  const t = state.t;
  if (!number) return t("empty");
  if (!/^[0-9*#+]+$/.test(number)) return t("notFound");
  const digits = number.replace(/\+/g, "").length;
  const max = state.config.max_digits || 32;
  if (digits > max) return t("tooLong", { n: max });
  return null;
}

async function dial(number) {
  const problem = validNumber(number);
  if (problem) {
    state.lastEnd = { text: state.t("failed", { reason: problem }), at: Date.now() };
    render();
    return;
  }
  state.lastEnd = null;
  $("number").value = "";
  await state.phone.dial(number);
}

function focusCall() {
  const calls = state.phone ? state.phone.calls : [];
  if (state.consultation && calls.includes(state.consultation)) return state.consultation;
  return calls.find((c) => c.state === "connected") || calls.find((c) => c.state === "calling")
    || calls.find((c) => c.state === "onHold") || null;
}

function ringingCall() { return state.phone ? state.phone.calls.find((c) => c.state === "ringing") || null : null; }

function fmt(ms) {
  const s = Math.max(0, Math.floor(ms / 1000));
  const h = Math.floor(s / 3600);
  const mm = String(Math.floor((s % 3600) / 60)).padStart(2, "0");
  const ss = String(s % 60).padStart(2, "0");
  return h ? `${h}:${mm}:${ss}` : `${mm}:${ss}`;
}

function render() {
  const t = state.t;
  const phone = state.phone;
  if (!phone) return;
  const reg = $("reg");
  reg.classList.toggle("on", phone.registered);
  $("reg-text").textContent = phone.registered ? t("registered") : (phone.sm ? t("unregistered") : t("connecting"));
  const call = focusCall();
  const ringing = ringingCall();
  // the status: one of Ready, Calling, Ringing, Connected, On hold, Call ended, Failed: <reason>
  let status = "";
  if (call) status = t(call.state);
  else if (ringing) status = t("ringing");
  else if (state.lastEnd) status = state.lastEnd.text;
  else if (phone.registered) status = t("ready");
  $("status").textContent = status;
  $("status").dataset.state = call ? call.state : ringing ? "ringing" : state.lastEnd ? "ended" : "ready";
  // the call shown
  $("call-info").hidden = !call;
  if (call) {
    $("call-remote").textContent = call.remote;
    $("call-timer").textContent = fmt(call.answeredAt ? Date.now() - call.answeredAt : 0);
    $("dtmf-sent").textContent = state.dtmf;
  } else {
    state.dtmf = "";
  }
  // incoming, or waiting behind a call in progress
  $("incoming").hidden = !ringing;
  if (ringing) {
    const waiting = Boolean(call);
    $("incoming-kind").textContent = waiting ? t("waiting") : t("incoming");
    $("incoming-from").textContent = ringing.remote;
    $("incoming-note").textContent = waiting ? t("answerHolds") : "";
    $("incoming").classList.toggle("waiting", waiting);
  }
  const inCall = Boolean(call);
  const established = call && (call.state === "connected" || call.state === "onHold");
  $("call-btn").hidden = (inCall && !(call.held && !state.transferFrom)) || (Boolean(ringing) && !inCall);
  $("hangup-btn").hidden = !inCall;
  $("mute-btn").hidden = !established || call.held;
  $("mute-btn").setAttribute("aria-pressed", String(Boolean(call && call.muted)));
  $("mute-btn").classList.toggle("active", Boolean(call && call.muted));
  $("hold-btn").hidden = !established || call.held;
  $("resume-btn").hidden = !established || !call.held;
  $("transfer-btn").hidden = !established || Boolean(state.transferFrom);
  const transferring = Boolean(state.transferFrom);
  $("complete-btn").hidden = !(transferring && state.consultation && state.consultation.state === "connected");
  $("consult-btn").hidden = Boolean(state.consultation);
  $("blind-btn").hidden = Boolean(state.consultation);
  // other calls (held, waiting)
  const list = $("calls-list");
  list.replaceChildren();
  for (const other of phone.calls) {
    if (other === call || other.state === "ringing") continue;
    const li = document.createElement("li");
    const label = document.createElement("span");
    label.textContent = `${other.remote} · ${t(other.state)}`;
    li.append(label);
    if (other.held) {
      const swap = document.createElement("button");
      swap.type = "button";
      swap.className = "ghost";
      swap.textContent = `${t("resume")} ${other.remote}`;
      swap.addEventListener("click", () => phone.resume(other));
      li.append(swap);
    }
    list.append(li);
  }
  list.hidden = !list.children.length;
  clearTimeout(state.timer);
  if (call && call.answeredAt) state.timer = setTimeout(render, 1000);
  if (!call && state.lastEnd && Date.now() - state.lastEnd.at > 4000 && !/:/.test(state.lastEnd.text)) {
    state.lastEnd = null;
    state.timer = setTimeout(render, 0);
  } else if (!call && state.lastEnd) {
    state.timer = setTimeout(render, 1000);
  }
}

// ---- controls ----------------------------------------------------------------------------------
function press(key) {
  const call = focusCall();
  if (call && call.state === "connected" && !state.transferFrom) {
    state.dtmf = (state.dtmf + key).slice(-24);
    state.phone.dtmf(call, key);
    render();
    return;
  }
  const input = state.transferFrom ? $("transfer-number") : $("number");
  input.value += key;
  input.focus();
}

function buildKeypad() {
  const pad = $("keypad");
  for (const [digit, letters] of KEYS) {
    const key = document.createElement("button");
    key.type = "button";
    key.className = "key";
    key.setAttribute("aria-label", digit);
    key.innerHTML = `<span class="digit"></span><span class="letters"></span>`;
    key.querySelector(".digit").textContent = digit;
    key.querySelector(".letters").textContent = letters;
    key.addEventListener("click", () => press(digit));
    pad.append(key);
  }
}

function wire() {
  $("login-form").addEventListener("submit", onLogin);
  $("logout-btn").addEventListener("click", onLogout);
  $("settings-btn").addEventListener("click", async () => { await fillDevices(); $("settings").showModal(); });
  $("del-btn").addEventListener("click", () => { const n = $("number"); n.value = n.value.slice(0, -1); });
  $("number").addEventListener("keydown", (event) => { if (event.key === "Enter") dial($("number").value.trim()); });
  $("call-btn").addEventListener("click", () => dial($("number").value.trim()));
  $("hangup-btn").addEventListener("click", () => { const call = focusCall(); if (call) state.phone.hangup(call); });
  $("answer-btn").addEventListener("click", () => { const call = ringingCall(); if (call) state.phone.answer(call); });
  $("reject-btn").addEventListener("click", () => { const call = ringingCall(); if (call) state.phone.reject(call); });
  $("mute-btn").addEventListener("click", () => { const call = focusCall(); if (call) state.phone.toggleMute(call); });
  $("hold-btn").addEventListener("click", () => { const call = focusCall(); if (call) state.phone.hold(call); });
  $("resume-btn").addEventListener("click", () => { const call = focusCall(); if (call) state.phone.resume(call); });
  $("transfer-btn").addEventListener("click", () => {
    state.transferFrom = focusCall();
    $("transfer-panel").hidden = false;
    $("transfer-number").value = "";
    $("transfer-number").focus();
    render();
  });
  $("transfer-cancel-btn").addEventListener("click", async () => {
    if (state.consultation) await state.phone.hangup(state.consultation).catch(() => {});
    state.transferFrom = null;
    state.consultation = null;
    $("transfer-panel").hidden = true;
    render();
  });
  $("blind-btn").addEventListener("click", async () => {
    const target = $("transfer-number").value.trim();
    const problem = validNumber(target);
    if (problem || !state.transferFrom) return;
    await state.phone.blindTransfer(state.transferFrom, target);
  });
  $("consult-btn").addEventListener("click", async () => {
    const target = $("transfer-number").value.trim();
    if (validNumber(target) || !state.transferFrom) return;
    if (state.transferFrom.pending) await state.transferFrom.pending; // a resume still unanswered
    if (!state.transferFrom.held) await state.phone.hold(state.transferFrom);
    const before = new Set(state.phone.calls);
    await state.phone.dial(target);
    state.consultation = state.phone.calls.find((c) => !before.has(c)) || null;
    render();
  });
  $("complete-btn").addEventListener("click", async () => {
    if (state.transferFrom && state.consultation) await state.phone.attendedTransfer(state.transferFrom, state.consultation);
  });
  $("mic-select").addEventListener("change", (event) => {
    if (!state.phone) return;
    state.phone.setInput(event.target.value);
    savePrefs(state.phone.prefs);
  });
  $("speaker-select").addEventListener("change", (event) => {
    if (!state.phone) return;
    state.phone.setOutput(event.target.value);
    savePrefs(state.phone.prefs);
  });
  $("lang-select").addEventListener("change", (event) => setLang(event.target.value));
  document.addEventListener("keydown", (event) => {
    if (event.target instanceof HTMLInputElement || !state.phone) return;
    if (/^[0-9*#]$/.test(event.key)) press(event.key);
  });
}

async function main() {
  buildKeypad();
  wire();
  const { data: config } = await api.config();
  state.config = config || {};
  state.lang = pickLang(state.config.default_lang);
  state.t = translator(state.lang);
  applyLang();
  document.title = state.config.title || document.title;
  const { status, data } = await api.session();
  if (status === 200) await startPhone(data);
  else showLogin();
}

// What a test or a support engineer may read: the calls and their media statistics.
window.webfon = {
  state,
  async stats() {
    const phone = state.phone;
    if (!phone) return [];
    return Promise.all(phone.calls.map(async (c) => ({ remote: c.remote, state: c.state, stats: await phone.stats(c) })));
  },
};

main();
