"""The gateway's config: the partner API and the WebRTC front end (``webrtc``), from YAML with
``MAATA_GATEWAY__*`` overrides (``maata serve`` nests it as ``gateway``: ``MAATA_SERVE__GATEWAY__*``).

Both front ends share the backends, speech detection and admission
(``services.gateway.admission``): the gateway-wide cap on live calls (``max_calls``) with a
reserve for tenants holding no call (``reserve_calls``), each API key's limits, and the
anonymous browser pool (``anonymous``); the browser front end adds per-address and global offer
rate limits and call tokens (``webrtc``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from maata import config as cfglib
from services.common.config import ServerConfig
from services.gateway.auth import AuthConfig
from services.gateway.pipeline import PipelineConfig
from services.gateway.speech import SpeechConfig

ENV_PREFIX = "MAATA_GATEWAY__"
SAMPLE_RATES = (8000, 16000, 24000, 48000)
GATEWAY_MAX_MESSAGE_BYTES = 8 * 1024 * 1024
LB_POLICIES = ("round_robin", "pick_first")  # how the gateway's channels pick a backend replica per call


@dataclass(frozen=True)
class IceServer:
    """A STUN or TURN server offered to both ends of a browser call (``urls`` like
    ``stun:stun.example.org:3478`` or ``turn:turn.example.org:3478?transport=udp``)."""

    urls: list[str] = field(default_factory=list)
    username: str = ""
    credential: str = ""

    def __post_init__(self) -> None:
        if not self.urls or any(not u.startswith(("stun:", "turn:", "turns:")) for u in self.urls):
            raise ValueError(f"ice server urls must be stun:, turn: or turns: URLs, got {self.urls}")


@dataclass(frozen=True)
class AnonymousConfig:
    """The pool of browser calls that carry no call token (the public demo page): one tenant."""

    max_calls: int = 4  # live anonymous calls at once, all addresses together
    calls_per_minute: int = 30  # anonymous call starts per minute

    def __post_init__(self) -> None:
        if self.max_calls < 0 or self.calls_per_minute < 1:
            raise ValueError(f"anonymous max_calls must be >= 0 (0: tokens only) and calls_per_minute >= 1, got "
                             f"{self.max_calls} and {self.calls_per_minute}")


@dataclass(frozen=True)
class WebRTCConfig:
    """The browser front end: an HTTP server (the page and ``POST /api/offer`` signalling) and
    one aiortc peer connection per call. See ``services.gateway.webrtc``."""

    enabled: bool = True
    port: int = 7180  # HTTP (page + signalling); 0 = any free port; host: the gateway server's
    ice_servers: list[IceServer] = field(default_factory=list)  # STUN/TURN for both ends ([] = host candidates)
    host_addresses: list[str] = field(default_factory=list)  # ICE host candidates ([] = every non-loopback
    #                                                          interface; ["127.0.0.1"] in a loopback-only netns)
    max_calls_per_client: int = 2  # live and connecting browser calls per client address
    offers_per_minute_per_client: int = 20  # offers one client address may make per minute (429 beyond)
    offers_per_minute: int = 240  # offers per minute, all addresses together (429 beyond)
    max_pending: int = 16  # answered offers not yet connected with audio flowing (503 beyond)
    max_offer_bytes: int = 64 * 1024  # the signalling request body (413 beyond)
    connect_timeout_s: float = 10.0  # answer -> connected with audio flowing, else the call is dropped
    call_token_max_ttl_s: float = 600.0  # call tokens may live at most this long (exp - iat)
    out_queue_ms: int = 120  # agent audio buffered for sending at most; older 20 ms frames are dropped
    in_stale_ms: int = 120  # user audio later than this behind real time is dropped, not queued
    in_jitter_packets: int = 0  # aiortc's receive jitter buffer in packets (its default 4; 0 = each packet as it arrives)
    ptime_in_ms: int = 0  # Opus packet length the answer asks the browser for (10 or 20; 0 = the browser's choice, 20)
    ptime_out_ms: int = 20  # Opus packet length of the agent's audio (10 or 20)
    opus_application: str = "lowdelay"  # the agent's Opus encoder: lowdelay (CELT only, 2.5 ms look-ahead), voip (6.5), audio
    out_pacing: str = "fixed"  # the agent's send clock: fixed (from media start) or anchored (to the first agent audio)
    out_late_ms: float = 0.0  # anchored: how long a tick waits for a late frame before sending silence
    browser_jitter_target_ms: int | None = 0  # the page's RTCRtpReceiver.jitterBufferTarget (None: Chrome's own)
    echo: bool = True  # allow mode "echo" (codec only: the user hears themself through the codec)
    stats_interval_s: float = 1.0  # data-channel stats events
    resample_quality: str = "LD"  # the 48 kHz <-> 16 kHz streams: LD (low-delay FIR) or a soxr quality (QQ .. VHQ)

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"webrtc port must be a TCP port (0 = any free one), got {self.port}")
        for name in ("max_calls_per_client", "offers_per_minute_per_client", "offers_per_minute", "max_pending"):
            if getattr(self, name) < 1:
                raise ValueError(f"webrtc {name} must be >= 1, got {getattr(self, name)}")
        if self.max_offer_bytes < 1024:
            raise ValueError(f"webrtc max_offer_bytes must be >= 1024, got {self.max_offer_bytes}")
        if not 0 <= self.in_jitter_packets <= 8:
            raise ValueError(f"webrtc in_jitter_packets must be in [0, 8], got {self.in_jitter_packets}")
        if self.ptime_in_ms not in (0, 10, 20) or self.ptime_out_ms not in (10, 20):
            raise ValueError(f"webrtc ptime_in_ms must be 0, 10 or 20 and ptime_out_ms 10 or 20 (Opus packet ms), "
                             f"got {self.ptime_in_ms} and {self.ptime_out_ms}")
        if self.opus_application not in ("voip", "lowdelay", "audio"):
            raise ValueError(f"webrtc opus_application must be voip, lowdelay or audio, got {self.opus_application!r}")
        if self.out_pacing not in ("fixed", "anchored"):
            raise ValueError(f"webrtc out_pacing must be fixed or anchored, got {self.out_pacing!r}")
        if not 0 <= self.out_late_ms <= 100:
            raise ValueError(f"webrtc out_late_ms must be in [0, 100], got {self.out_late_ms}")
        if self.browser_jitter_target_ms is not None and not 0 <= self.browser_jitter_target_ms <= 4000:
            raise ValueError(f"webrtc browser_jitter_target_ms must be in [0, 4000] or null, "
                             f"got {self.browser_jitter_target_ms}")
        if self.resample_quality not in ("LD", "QQ", "LQ", "MQ", "HQ", "VHQ"):
            raise ValueError(f"webrtc resample_quality must be LD or a soxr quality (QQ, LQ, MQ, HQ, VHQ), "
                             f"got {self.resample_quality!r}")
        if self.out_queue_ms < 40 or self.in_stale_ms < 40:
            raise ValueError("webrtc out_queue_ms and in_stale_ms must be >= 40 (one frame)")
        for name in ("connect_timeout_s", "stats_interval_s", "call_token_max_ttl_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"webrtc {name} must be positive, got {getattr(self, name)}")


@dataclass(frozen=True)
class GatewayConfig:
    """The gateway: where the backends are, keys and quotas, formats, speech detection, the browser front end."""

    # the gRPC message hard cap (8 MiB) is far above the largest audio chunk the API takes (1 s), so an
    # oversized chunk gets the application's INVALID_ARGUMENT; gRPC's RESOURCE_EXHAUSTED is left for beyond it
    server: ServerConfig = field(default_factory=lambda: ServerConfig(max_message_bytes=GATEWAY_MAX_MESSAGE_BYTES))
    codec: str = ""  # the codec service's host:port (``maata serve`` fills it in)
    generation: str = ""  # the generation service's host:port
    # Both targets may name several replicas: "dns:///generation.ns.svc.cluster.local:7102" (a headless
    # Service: one address per ready pod) or "ipv4:10.0.0.5:7102,10.0.0.6:7102". Each call is one
    # long-lived stream, so balancing connections would pin every call to one replica; round_robin puts
    # each new call's stream on the next ready replica, and skips one that is down (its calls resume on
    # another from the session store). pick_first: one replica, the next only when it fails.
    lb_policy: str = "round_robin"
    session_store: str = ""  # the call histories: SessionStore host:port or redis:// URL ("": no resume check)
    store_timeout_s: float = 2.0
    connect_timeout_s: float = 30.0  # how long start-up waits for the backends
    auth: AuthConfig = field(default_factory=AuthConfig)
    max_calls: int = 16  # live calls on this gateway, all tenants together (the generation slots it fronts)
    reserve_calls: int = 2  # the last free slots go only to a tenant holding no call (a burst cannot refuse others)
    anonymous: AnonymousConfig = field(default_factory=AnonymousConfig)  # browser calls without a call token
    sample_rates: list[int] = field(default_factory=lambda: list(SAMPLE_RATES))
    max_chunk_seconds: float = 1.0
    resample_quality: str = "HQ"  # soxr quality of the per-call streaming resamplers
    lossless_max_ahead: int = 3  # lossless calls: frames ahead of the agent (< generation max_queued_frames)
    user_speech: SpeechConfig = field(default_factory=SpeechConfig)
    agent_speech: SpeechConfig = field(default_factory=lambda: SpeechConfig(above_silence_db=9.0))  # calibrated
    voices: list[str] = field(default_factory=list)  # known voices (empty: the backends' or unchecked)
    emotions: list[str] = field(default_factory=list)
    webrtc: WebRTCConfig = field(default_factory=WebRTCConfig)

    def __post_init__(self) -> None:
        if self.max_calls < 1:
            raise ValueError(f"gateway max_calls must be >= 1, got {self.max_calls}")
        if not 0 <= self.reserve_calls < self.max_calls:
            raise ValueError(f"gateway reserve_calls must be in [0, max_calls), got {self.reserve_calls}")
        bad = [r for r in self.sample_rates if r not in SAMPLE_RATES]
        if bad or not self.sample_rates:
            raise ValueError(f"gateway sample_rates must be a non-empty subset of {SAMPLE_RATES}, got {self.sample_rates}")
        if not 0 < self.max_chunk_seconds <= 10:
            raise ValueError(f"gateway max_chunk_seconds must be in (0, 10], got {self.max_chunk_seconds}")
        if 2 * max(self.sample_rates) * self.max_chunk_seconds + 1024 > self.server.max_message_bytes:
            raise ValueError("gateway max_chunk_seconds of PCM16 at the highest rate does not fit in "
                             f"server.max_message_bytes ({self.server.max_message_bytes})")
        for name in ("store_timeout_s", "connect_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"gateway {name} must be positive, got {getattr(self, name)}")
        if self.lb_policy not in LB_POLICIES:
            raise ValueError(f"gateway lb_policy must be one of {LB_POLICIES}, got {self.lb_policy!r}")

    def pipeline(self) -> PipelineConfig:
        return PipelineConfig(max_ahead_frames=self.lossless_max_ahead, user_speech=self.user_speech,
                              agent_speech=self.agent_speech)


def load_config(path: str | Path | None = None, environ: Mapping[str, str] | None = None,
                **overrides: Any) -> GatewayConfig:
    """The config from YAML ``path`` (optional), ``overrides``, then ``MAATA_GATEWAY__*`` variables."""
    return cfglib.load(GatewayConfig, path, env_prefix=ENV_PREFIX, overrides=overrides or None, environ=environ)


__all__ = ["AnonymousConfig", "ENV_PREFIX", "GATEWAY_MAX_MESSAGE_BYTES", "GatewayConfig", "IceServer", "SAMPLE_RATES", "WebRTCConfig", "load_config"]
