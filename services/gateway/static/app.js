// Maata's browser client: one WebRTC call to the gateway (POST /api/offer, no trickle ICE), the
// microphone up, the agent's audio down, events and control on the "events" data channel.
// URL options: ?mode=echo|model  ?voice=female_1  ?emotion=HAPPY  ?aec=0 (no echo cancellation,
// noise suppression or AGC)  ?record=1 (keep level envelopes for the latency benchmark)
// ?jbt=MS|none (the receiver's jitterBufferTarget; default the server's jitter_buffer_target_ms).
"use strict";

const VOICES = { male_1: "పురుషుడు 1 · Male 1", male_2: "పురుషుడు 2 · Male 2",
                 female_1: "స్త్రీ 1 · Female 1", female_2: "స్త్రీ 2 · Female 2" };
const EMOTIONS = { NEUTRAL: "సాధారణం · Neutral", HAPPY: "సంతోషం · Happy", LAUGH: "నవ్వు · Laugh",
                   EXCITED: "ఉత్సాహం · Excited", EMPATHY: "సానుభూతి · Empathy", SURPRISE: "ఆశ్చర్యం · Surprise",
                   THINKING: "ఆలోచన · Thinking", TELUGU_ACCENT_HEAVY: "గాఢమైన యాస · Heavy accent",
                   TELUGU_ACCENT_MILD: "తేలికపాటి యాస · Mild accent" };
const STATES = { idle: "సిద్ధం · Ready", connecting: "కలుపుతోంది · Connecting…", connected: "మాట్లాడండి · Connected — speak",
                 ended: "కాల్ ముగిసింది · Call ended", failed: "కనెక్షన్ విఫలమైంది · Connection failed" };
const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);

// Everything a test or a curious person may read: window.maata
const maata = window.maata = {
  state: "idle", callId: "", events: [], text: "", stats: {}, browser: {}, error: "", levels: { you: 0, agent: 0 },
  config: null, envelope: { rate: 0, you: [], agent: [] }, call, hangup, setStyle,
};
let pc = null, channel = null, mic = null, audioCtx = null, meterTimer = null, statsTimer = null;

function setState(s) { maata.state = s; const el = $("state"); el.dataset.state = s; el.textContent = STATES[s] || s; }
function showError(msg) { maata.error = msg; const el = $("error"); el.textContent = msg; el.hidden = !msg; }
function ms(v) { return v == null || Number.isNaN(v) ? "–" : `${Math.round(v)} ms`; }

function fill(select, names, labels, chosen) {
  select.innerHTML = "";
  for (const n of names) {
    const o = document.createElement("option"); o.value = n; o.textContent = labels[n] || n; select.appendChild(o);
  }
  if (chosen && names.includes(chosen)) select.value = chosen;
}

async function loadConfig() {
  const r = await fetch("/api/config");
  maata.config = await r.json();
  fill($("voice"), maata.config.voices.length ? maata.config.voices : Object.keys(VOICES), VOICES, params.get("voice"));
  fill($("emotion"), maata.config.emotions.length ? maata.config.emotions : Object.keys(EMOTIONS), EMOTIONS,
       params.get("emotion") || "NEUTRAL");
  for (const o of [...$("mode").options]) o.disabled = !maata.config.modes.includes(o.value);
  if (params.get("mode")) $("mode").value = params.get("mode");
}

async function call() {
  if (pc || maata.state === "connecting") return;
  showError(""); maata.events = []; maata.text = ""; $("text").textContent = ""; setState("connecting");
  const aec = params.get("aec") !== "0";
  try {
    mic = await navigator.mediaDevices.getUserMedia({ audio: {
      echoCancellation: aec, noiseSuppression: aec, autoGainControl: aec, channelCount: 1 } });
  } catch (err) {
    setState("failed");
    const denied = err && (err.name === "NotAllowedError" || err.name === "SecurityError");
    showError(denied ? "మైక్రోఫోన్ అనుమతి నిరాకరించబడింది · Microphone access was denied: allow it and call again."
                     : `మైక్రోఫోన్ దొరకలేదు · No microphone: ${err && err.message}`);
    return;
  }
  // Every handler below belongs to this one connection: once it has ended (hang-up timer, server
  // "ended" event, failure) a late callback must not touch the next call's connection.
  const conn = pc = new RTCPeerConnection({ iceServers: (maata.config && maata.config.ice_servers) || [] });
  const current = () => pc === conn;
  const [track] = mic.getAudioTracks();
  conn.addTransceiver(track, { direction: "sendrecv", streams: [mic] });
  channel = conn.createDataChannel("events");
  channel.onmessage = (e) => { if (current()) onEvent(JSON.parse(e.data)); };
  conn.ontrack = (e) => {
    if (!current()) return;
    const jbt = jitterTarget();
    if (jbt != null && "jitterBufferTarget" in e.receiver) e.receiver.jitterBufferTarget = jbt;  // playout delay wish (ms)
    const el = $("remote"); el.srcObject = e.streams[0] || new MediaStream([e.track]); el.play().catch(() => {}); startMeters(e.track);
  };
  conn.onconnectionstatechange = () => {
    if (!current()) return;
    const s = conn.connectionState;
    if (s === "connected") setState("connected");
    if (s === "failed") { showError("కనెక్షన్ విఫలమైంది · The connection failed (network/firewall?)"); end("failed"); }
  };
  $("call").disabled = true; $("hangup").disabled = false;
  try {
    await conn.setLocalDescription(await conn.createOffer());
    await iceComplete(conn, 5000);
    if (!current()) return;  // hung up while the offer was being prepared
    const r = await fetch("/api/offer", { method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ sdp: withPtime(conn.localDescription.sdp), type: "offer", voice: $("voice").value,
                             emotion: $("emotion").value, mode: $("mode").value, text: true,
                             // a partner's page passes the call token its backend minted (?token=...)
                             ...(params.get("token") ? { token: params.get("token") } : {}) }) });
    const body = await r.json().catch(() => ({ error: `HTTP ${r.status}` }));
    if (!current()) return;
    if (!r.ok) {
      const busy = r.status === 503 || r.status === 429;
      showError((busy ? "సర్వర్ బిజీగా ఉంది · Server busy: " : "కాల్ కుదరలేదు · Call refused: ") + (body.error || r.status));
      end("failed"); return;
    }
    maata.callId = body.call_id; $("call-id").textContent = `call ${body.call_id}`;
    await conn.setRemoteDescription(body);
    if (current()) statsTimer = setInterval(pollStats, 1000);
  } catch (err) {
    if (!current()) return;
    showError(`కాల్ కుదరలేదు · Call failed: ${err && err.message}`); end("failed");
  }
}

// The receiver's jitterBufferTarget in ms, or null to leave Chrome's own adaptive target.
function jitterTarget() {
  const p = params.get("jbt");
  if (p === "none") return null;
  if (p != null && p !== "") return Number(p);
  const c = maata.config && maata.config.jitter_buffer_target_ms;
  return c == null ? null : c;
}

// The offer tells the server which Opus packet length this page would like to receive (the
// server's own, from /api/config): a=ptime in the audio section.
function withPtime(sdp) {
  const ptime = maata.config && maata.config.ptime_ms;
  if (!ptime) return sdp;
  return sdp.replace(/(m=audio[^]*?)(?=\r\nm=|\r\n$)/, (audio) =>
    audio.replace(/\r\na=ptime:\d+/g, "") + `\r\na=ptime:${ptime}`);
}

function iceComplete(pc, timeoutMs) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => { if (pc.iceGatheringState === "complete") { pc.removeEventListener("icegatheringstatechange", done); resolve(); } };
    pc.addEventListener("icegatheringstatechange", done);
    setTimeout(resolve, timeoutMs);  // offer what was gathered so far
  });
}

function onEvent(ev) {
  ev.at = performance.now();
  maata.events.push(ev);
  if (maata.events.length > 2000) maata.events.splice(0, 1000);
  switch (ev.type) {
    case "ready": maata.callId = ev.call_id; break;
    case "text": maata.text += ev.text; $("text").textContent = maata.text; break;
    case "speaking": $("speaking").hidden = !ev.agent; break;
    case "turn": $("lat-turn").textContent = ms(ev.ms); break;
    case "stats": maata.stats = ev; showLatency(); break;
    case "style": $("voice").value = ev.voice || $("voice").value; $("emotion").value = ev.emotion || $("emotion").value; break;
    case "error": showError(`${ev.code}: ${ev.message}`); break;
    case "ended":
      if (ev.code !== "OK" && ev.code !== "CANCELLED") showError(`కాల్ ముగిసింది · Call ended: ${ev.reason}`);
      end("ended"); break;
  }
}

async function pollStats() {
  if (!pc) return;
  const report = await pc.getStats();
  const b = {};
  report.forEach((s) => {
    if (s.type === "candidate-pair" && s.nominated && s.currentRoundTripTime != null) b.rtt_ms = s.currentRoundTripTime * 1000;
    if (s.type === "inbound-rtp" && s.kind === "audio") {
      b.packets_in = s.packetsReceived; b.lost_in = s.packetsLost; b.level_in = s.audioLevel;
      b.energy_in = s.totalAudioEnergy;  // accumulates over the call: did the agent's voice arrive at all
      b.samples_in = s.totalSamplesReceived;
      if (maata.browser.packets_in != null && maata.browser.t_in != null && s.packetsReceived > maata.browser.packets_in)
        b.ptime_in_ms = (s.timestamp - maata.browser.t_in) / (s.packetsReceived - maata.browser.packets_in);  // the agent's packet length
      else if (maata.browser.ptime_in_ms) b.ptime_in_ms = maata.browser.ptime_in_ms;
      b.t_in = s.timestamp;
      if (s.jitterBufferEmittedCount) b.jitter_ms = 1000 * s.jitterBufferDelay / s.jitterBufferEmittedCount;
    }
    if (s.type === "inbound-rtp" && s.kind === "audio") {
      b.concealed = s.concealedSamples; b.decelerated = s.insertedSamplesForDeceleration;
      b.accelerated = s.removedSamplesForAcceleration; b.concealment_events = s.concealmentEvents;
      if (s.jitterBufferTargetDelay && s.jitterBufferEmittedCount) b.jitter_target_ms = 1000 * s.jitterBufferTargetDelay / s.jitterBufferEmittedCount;
    }
    if (s.type === "outbound-rtp" && s.kind === "audio") {
      if (maata.browser.packets_out != null && maata.browser.t != null && s.packetsSent > maata.browser.packets_out)
        b.ptime_out_ms = (s.timestamp - maata.browser.t) / (s.packetsSent - maata.browser.packets_out);  // this page's packet length
      else if (maata.browser.ptime_out_ms) b.ptime_out_ms = maata.browser.ptime_out_ms;
      b.packets_out = s.packetsSent; b.t = s.timestamp;
    }
  });
  maata.browser = b; showLatency();
}

// Mouth-to-ear estimate: a sample waits for its codec frame to fill, the browser's Opus packet
// (measured from its packet rate), one RTT on the network (up and down), the server's time from
// the frame's arrival to the agent frame leaving (p50), the wait in the server's outgoing queue
// (p50) and the browser's jitter buffer.
function showLatency() {
  const s = maata.stats, b = maata.browser;
  $("lat-server").textContent = s.server_ms_p50 == null ? "–" : `${ms(s.server_ms_p50)} / ${ms(s.server_ms_p99)}`;
  $("lat-rtt").textContent = ms(b.rtt_ms);
  $("lat-jitter").textContent = ms(b.jitter_ms);
  if (s.server_ms_p50 != null) {
    maata.m2e_ms = (s.frame_ms || 40) + (b.ptime_out_ms || 20) + (b.rtt_ms || 0) + s.server_ms_p50 + (s.out_wait_ms_p50 ?? s.out_queue_ms ?? 0) + (b.jitter_ms || 0);
    $("lat-m2e").textContent = ms(maata.m2e_ms);
  }
}

async function startMeters(remoteTrack) {
  audioCtx = new AudioContext();
  const you = audioCtx.createMediaStreamSource(mic);
  const agent = audioCtx.createMediaStreamSource(new MediaStream([remoteTrack]));
  const aYou = audioCtx.createAnalyser(), aAgent = audioCtx.createAnalyser();
  aYou.fftSize = aAgent.fftSize = 1024;
  you.connect(aYou); agent.connect(aAgent);
  if (params.get("record") === "1") {
    await audioCtx.audioWorklet.addModule("/static/recorder.js");
    const rec = new AudioWorkletNode(audioCtx, "maata-envelope", { numberOfInputs: 2, numberOfOutputs: 1 });
    maata.envelope.rate = audioCtx.sampleRate / 128;
    rec.port.onmessage = (e) => { maata.envelope.you.push(...e.data.you); maata.envelope.agent.push(...e.data.agent); };
    you.connect(rec, 0, 0); agent.connect(rec, 0, 1);
    const sink = audioCtx.createGain(); sink.gain.value = 0; rec.connect(sink).connect(audioCtx.destination);
  }
  const buf = new Float32Array(1024);
  const level = (a) => { a.getFloatTimeDomainData(buf); let s = 0; for (const x of buf) s += x * x; return Math.sqrt(s / buf.length); };
  const width = (rms) => `${Math.max(0, Math.min(100, (20 * Math.log10(rms + 1e-6) + 60) / 60 * 100))}%`;
  meterTimer = setInterval(() => {
    maata.levels = { you: level(aYou), agent: level(aAgent) };
    $("level-you").style.width = width(maata.levels.you);
    $("level-agent").style.width = width(maata.levels.agent);
  }, 50);
}

function setStyle(voice, emotion) {
  if (channel && channel.readyState === "open") channel.send(JSON.stringify({ type: "style", voice, emotion }));
}

function hangup() {
  if (!pc) return;
  if (channel && channel.readyState === "open") channel.send(JSON.stringify({ type: "hangup" }));
  // give the hang-up message 300 ms to leave, then close this call (not a newer one started since)
  const conn = pc;
  setTimeout(() => { if (pc === conn) end("ended"); }, 300);
}

function end(state) {
  clearInterval(statsTimer); clearInterval(meterTimer);
  if (pc) { pc.close(); pc = null; }
  if (mic) { mic.getTracks().forEach((t) => t.stop()); mic = null; }
  if (audioCtx) { audioCtx.close(); audioCtx = null; }
  channel = null;
  setState(state); $("call").disabled = false; $("hangup").disabled = true; $("speaking").hidden = true;
}

$("call").addEventListener("click", call);
$("hangup").addEventListener("click", hangup);
$("voice").addEventListener("change", () => setStyle($("voice").value, ""));
$("emotion").addEventListener("change", () => setStyle("", $("emotion").value));
window.addEventListener("pagehide", () => { if (pc) hangup(); });
loadConfig().then(() => { maata.loaded = true; }).catch((e) => showError(`సర్వర్ అందుబాటులో లేదు · Server unreachable: ${e.message}`));
