// The SIP side of the webfon: sip.js's SessionManager (an ordinary SIP UA over WSS to
// vivait-sip), one entry per call, and the audio of each call in its own <audio>.
// Emits plain events for the UI: "registration" (bool), "calls" (the list changed),
// "ended" (call, reason).

let SIP = null;

export async function loadSip() {
  if (!SIP) SIP = await import("../vendor/sip.js/lib/index.js");
  return SIP;
}

// sip.js resolves a hold or resume once the re-INVITE is sent; we wait for its answer (at most this long)
const REINVITE_WAIT_MS = 10000;
const REASONS = { 486: "busy", 600: "busy", 603: "declined", 404: "notFound", 480: "unavailable", 408: "unavailable" };

export class Phone extends EventTarget {
  constructor(session, prefs) {
    super();
    this.info = session; // the /api/session answer: user, extension, sip credentials
    this.prefs = prefs; // { input, output } device ids (remembered per user)
    this.calls = []; // { id, session, direction, remote, state, startedAt, answeredAt, held, muted, audio }
    this.registered = false;
    this.sm = null;
  }

  emit(type, detail) { this.dispatchEvent(new CustomEvent(type, { detail })); }

  async start() {
    const { Web } = await loadSip();
    const sip = this.info.sip;
    const config = this.info.config || {};
    const options = {
      aor: sip.uri,
      maxSimultaneousSessions: 2,
      sendDTMFUsingSessionDescriptionHandler: true,
      media: { constraints: this.constraints() },
      registererOptions: { expires: sip.register_expires_s, regId: 1 },
      userAgentOptions: {
        authorizationUsername: sip.username,
        authorizationPassword: sip.password,
        displayName: sip.display_name,
        userAgentString: sip.user_agent,
        logLevel: "warn",
        sessionDescriptionHandlerFactoryOptions: {
          iceGatheringTimeout: 1000,
          peerConnectionConfiguration: { iceServers: config.ice_servers || [] },
        },
      },
      delegate: {
        onRegistered: () => { this.registered = true; this.emit("registration", true); },
        onUnregistered: () => { this.registered = false; this.emit("registration", false); },
        onServerDisconnect: () => { this.registered = false; this.emit("registration", false); },
        onCallReceived: (session) => { if (!this.find(session)) this.added(session, "in"); },
        onCallCreated: (session) => {
          if (!this.find(session)) this.added(session, session instanceof SIP.Invitation ? "in" : "out");
        },
        onCallAnswered: (session) => this.answered(session),
        onCallHangup: (session) => this.hungUp(session),
        onCallHold: (session, held) => this.update(session, { held }),
      },
    };
    this.sm = new Web.SessionManager(sip.ws_url, options);
    await this.sm.connect();
    await this.sm.register();
  }

  async stop() {
    if (!this.sm) return;
    try { await this.sm.unregister(); } catch { /* already gone */ }
    try { await this.sm.disconnect(); } catch { /* already gone */ }
    this.sm = null;
  }

  constraints() {
    const audio = this.prefs.input ? { deviceId: { exact: this.prefs.input } } : true;
    return { audio, video: false };
  }

  find(session) { return this.calls.find((c) => c.session === session); }

  added(session, direction) {
    const identity = direction === "in" ? session.remoteIdentity : null;
    const remote = identity
      ? (identity.displayName ? `${identity.displayName} (${identity.uri.user})` : identity.uri.user)
      : this.pendingTarget || "";
    this.pendingTarget = null;
    const call = {
      id: session.id, session, direction, remote, state: direction === "in" ? "ringing" : "calling",
      startedAt: Date.now(), answeredAt: null, held: false, muted: false, audio: null, reason: null,
    };
    this.calls.push(call);
    session.stateChange.addListener((state) => {
      if (state === "Terminated" && this.find(session)) this.hungUp(session);
    });
    if (direction === "out" && session.delegate === undefined) session.delegate = {};
    this.emit("calls");
    return call;
  }

  answered(session) {
    const call = this.find(session);
    if (!call) return;
    call.state = "connected";
    call.answeredAt = Date.now();
    this.attachAudio(call);
    this.emit("calls");
  }

  attachAudio(call) {
    const stream = this.sm.getRemoteMediaStream(call.session);
    if (!stream) return;
    if (!call.audio) {
      call.audio = document.createElement("audio");
      call.audio.autoplay = true;
      call.audio.dataset.call = call.id;
      document.getElementById("audio-sinks").append(call.audio);
    }
    call.audio.srcObject = stream;
    this.applySink(call.audio);
    call.audio.play().catch(() => {});
  }

  applySink(audio) {
    if (this.prefs.output && typeof audio.setSinkId === "function") {
      audio.setSinkId(this.prefs.output).catch(() => {});
    }
  }

  setOutput(id) {
    this.prefs.output = id;
    for (const call of this.calls) if (call.audio) this.applySink(call.audio);
  }

  setInput(id) {
    this.prefs.input = id;
    if (this.sm) this.sm.options.media.constraints = this.constraints();
  }

  hungUp(session) {
    const call = this.find(session);
    if (!call) return;
    this.calls = this.calls.filter((c) => c !== call);
    this.lastEnded = call;
    if (call.audio) { call.audio.srcObject = null; call.audio.remove(); }
    this.emit("calls");
    // a refused call's final response may be read just after the session ended: wait a moment for its reason
    const tell = () => this.emit("ended", { call, reason: call.reason });
    if (call.direction === "out" && !call.answeredAt && !call.reason) setTimeout(tell, 100); else tell();
  }

  update(session, fields) {
    const call = this.find(session);
    if (!call) return;
    Object.assign(call, fields);
    if ("held" in fields) call.state = fields.held ? "onHold" : "connected";
    if ("held" in fields && call.settle) call.settle(); // the re-INVITE was answered (onCallHold)
    this.emit("calls");
  }

  // ---- actions --------------------------------------------------------------------------
  async dial(target) {
    const domain = this.info.sip.uri.split("@")[1];
    this.pendingTarget = target;
    const active = this.active();
    if (active && active.pending) await active.pending; // a hold or resume still unanswered
    if (active && !active.held) await this.hold(active);
    const call = await this.sm.call(`sip:${target}@${domain}`, undefined, {
      requestDelegate: {
        onReject: (response) => {
          const found = this.calls.find((c) => c.remote === target && c.state === "calling") || this.lastEnded;
          if (found) found.reason = REASONS[response.message.statusCode] || String(response.message.reasonPhrase || response.message.statusCode);
        },
      },
    }).catch((error) => { this.emit("error", String(error.message || error)); return null; });
    return call;
  }

  active() { return this.calls.find((c) => c.state === "connected" || c.state === "onHold" || c.state === "calling") || null; }

  async answer(call) {
    for (const other of this.calls) {
      if (other !== call && other.state === "connected" && !other.held) await this.hold(other);
    }
    await this.sm.answer(call.session);
  }

  async reject(call) {
    // 603 Decline (sip.js's default is 480): the caller is told the call was refused
    call.reason = "declined";
    await call.session.reject({ statusCode: 603, reasonPhrase: "Decline" });
  }

  async hangup(call) { await this.sm.hangup(call.session); }

  async hold(call) { await this.reinvite(call, true); }

  async resume(call) {
    for (const other of this.calls) {
      if (other !== call && other.state === "connected" && !other.held) await this.hold(other);
    }
    await this.reinvite(call, false);
  }

  // Hold or resume, done when the re-INVITE is answered: what follows at once (a
  // consultation's hold, a transfer) would otherwise meet sip.js's "request pending".
  async reinvite(call, hold) {
    if (call.pending) await call.pending;
    if (this.sm.isHeld(call.session) !== hold) {
      let settle = () => {};
      call.pending = new Promise((resolve) => { settle = resolve; });
      call.settle = settle;
      try {
        await this.sm[hold ? "hold" : "unhold"](call.session);
        await Promise.race([call.pending, new Promise((resolve) => setTimeout(resolve, REINVITE_WAIT_MS))]);
      } finally {
        call.pending = null;
        call.settle = null;
        settle();
      }
    }
    this.update(call.session, { held: this.sm.isHeld(call.session) });
  }

  toggleMute(call) {
    if (call.muted) this.sm.unmute(call.session); else this.sm.mute(call.session);
    call.muted = !call.muted;
    this.emit("calls");
  }

  async dtmf(call, tone) { await this.sm.sendDTMF(call.session, tone).catch(() => {}); }

  async blindTransfer(call, target) {
    const domain = this.info.sip.uri.split("@")[1];
    await this.sm.transfer(call.session, `sip:${target}@${domain}`);
  }

  async attendedTransfer(call, consultation) {
    await this.sm.transfer(call.session, consultation.session);
  }

  async stats(call) {
    const pc = call.session.sessionDescriptionHandler && call.session.sessionDescriptionHandler.peerConnection;
    if (!pc) return null;
    const report = await pc.getStats();
    const out = { inbound: null, outbound: null };
    report.forEach((s) => {
      if (s.type === "inbound-rtp" && s.kind === "audio") out.inbound = { packetsReceived: s.packetsReceived, bytesReceived: s.bytesReceived, audioLevel: s.audioLevel };
      if (s.type === "outbound-rtp" && s.kind === "audio") out.outbound = { packetsSent: s.packetsSent, bytesSent: s.bytesSent };
    });
    return out;
  }
}
