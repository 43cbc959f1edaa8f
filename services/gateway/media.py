"""The browser call's media plumbing around aiortc, tuned for delay: what aiortc has no option for.

* ``PacketOpusEncoder``: the agent's Opus encoder with a chosen packet length (10 or 20 ms), mono,
  one packet per frame of exactly that length, and the RTP timestamp taken from the frame's own
  ``pts`` (aiortc's encoder re-frames everything to 20 ms stereo through a resampler).
  ``use_encoder`` installs it on a sender before media flows.
* ``ArrivalJitterBuffer``: aiortc's receive buffer hands a packet to the decoder only once
  ``prefetch`` later packets have arrived (at least one: a whole packet of delay). Audio packets
  are whole frames, so this one hands each packet on the moment it arrives.
* ``set_ptime``: asks the other end for a packet length in an SDP (``a=ptime`` and Opus
  ``minptime``), which Chrome's Opus encoder follows.
"""

from __future__ import annotations

import fractions
import logging
import re
from typing import Any

import av
from aiortc.codecs.base import Encoder
from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.rtp import RtpPacket
from aiortc.utils import uint16_add, uint16_gt

log = logging.getLogger("maata.services.gateway.media")

RTC_RATE = 48000
PTIMES_MS = (10, 20)  # Opus frame lengths we send and ask for (what WebRTC endpoints commonly support)
OPUS_APPLICATIONS = ("voip", "lowdelay", "audio")  # libopus: lowdelay is CELT only, 2.5 ms look-ahead instead of 6.5


class PacketOpusEncoder(Encoder):
    """Opus at 48 kHz mono, one ``ptime_ms`` packet per input frame of exactly that many samples."""

    def __init__(self, ptime_ms: int = 20, application: str = "voip", bitrate: int = 96000) -> None:
        if ptime_ms not in PTIMES_MS:
            raise ValueError(f"Opus packets of {ptime_ms} ms are not offered; use one of {PTIMES_MS}")
        if application not in OPUS_APPLICATIONS:
            raise ValueError(f"Opus application must be one of {OPUS_APPLICATIONS}, got {application!r}")
        self.samples = RTC_RATE * ptime_ms // 1000
        self.codec = av.CodecContext.create("libopus", "w")
        self.codec.bit_rate = bitrate
        self.codec.format = "s16"
        self.codec.layout = "mono"
        self.codec.sample_rate = RTC_RATE
        self.codec.time_base = fractions.Fraction(1, RTC_RATE)
        self.codec.options = {"application": application, "frame_duration": str(ptime_ms)}

    def encode(self, frame: Any, force_keyframe: bool = False) -> tuple[list[bytes], int | None]:
        if frame.samples != self.samples or frame.sample_rate != RTC_RATE or frame.layout.name != "mono":
            raise ValueError(f"expected mono {RTC_RATE} Hz frames of {self.samples} samples, got "
                             f"{frame.layout.name} {frame.sample_rate} Hz x {frame.samples}")
        pts = frame.pts
        packets = self.codec.encode(frame)
        if not packets:
            return [], None
        return [bytes(p) for p in packets], int(pts)

    def pack(self, packet: Any) -> tuple[list[bytes], int]:
        raise NotImplementedError("PacketOpusEncoder encodes audio frames; pre-encoded packets are not sent")


def use_encoder(sender: Any, encoder: Encoder) -> bool:
    """Make ``sender`` (an ``RTCRtpSender`` whose media has not started) encode with ``encoder``.
    aiortc picks its encoder lazily from the negotiated codec and has no option for it, so the
    private slot it fills is filled first. False (and a warning) on an aiortc without that slot."""
    slot = "_RTCRtpSender__encoder"
    if not hasattr(sender, slot):
        log.warning("this aiortc has no encoder slot on its sender; the agent's audio keeps aiortc's 20 ms packets")
        return False
    setattr(sender, slot, encoder)
    return True


class ArrivalJitterBuffer(JitterBuffer):
    """Audio packets handed on the moment they arrive, in sequence order and without waiting for
    later ones. A packet newer than the next expected one is handed on at once too (the missing
    ones count as ``skipped``: the decoder carries on from the newer packet, as after a loss); a
    packet older than the last one handed on is dropped (``late``: it can no longer be played in
    order). aiortc's receiver takes one frame per arriving packet, so a buffer that held packets
    back for reordering would keep them one packet late from then on; on the paths a call uses
    (loopback, a LAN, a TURN relay) reordering is rare enough that treating it as loss is cheaper
    than holding every packet."""

    def __init__(self) -> None:
        super().__init__(capacity=16, prefetch=0)
        self._next: int | None = None  # the sequence number expected next
        self.late = 0
        self.skipped = 0

    def add(self, packet: RtpPacket) -> tuple[bool, JitterFrame | None]:
        seq = packet.sequence_number
        if self._next is not None and seq != self._next:
            if not uint16_gt(seq, self._next):
                self.late += 1
                return False, None
            self.skipped += uint16_add(seq, -self._next)
        self._next = uint16_add(seq, 1)
        return False, JitterFrame(data=packet._data, timestamp=packet.timestamp)  # type: ignore[attr-defined]


def set_ptime(sdp: str, ptime_ms: int) -> str:
    """``sdp`` with every audio section asking for ``ptime_ms`` packets: ``a=ptime`` (replaced or
    added) and ``minptime`` in the Opus ``fmtp`` line."""
    if ptime_ms not in PTIMES_MS:
        raise ValueError(f"ptime must be one of {PTIMES_MS}, got {ptime_ms}")
    eol = "\r\n" if "\r\n" in sdp else "\n"
    sections = re.split(r"(?m)^(?=m=)", sdp)
    out = [sections[0]]
    for section in sections[1:]:
        if section.startswith("m=audio"):
            lines = [line for line in section.split(eol) if not line.startswith("a=ptime:")]
            opus = {m.group(1) for line in lines if (m := re.match(r"a=rtpmap:(\d+) opus/", line, re.I))}
            with_fmtp = set()
            for i, line in enumerate(lines):
                m = re.match(r"a=fmtp:(\d+) (.*)$", line)
                if m and m.group(1) in opus:
                    params = [p for p in m.group(2).split(";") if p and not p.strip().startswith("minptime=")]
                    lines[i] = f"a=fmtp:{m.group(1)} " + ";".join([f"minptime={ptime_ms}", *params])
                    with_fmtp.add(m.group(1))
            for pt in sorted(opus - with_fmtp):  # an Opus payload without parameters (aiortc's answer)
                at = next(i for i, line in enumerate(lines) if line.startswith(f"a=rtpmap:{pt} "))
                lines.insert(at + 1, f"a=fmtp:{pt} minptime={ptime_ms}")
            end = len(lines) - 1 if lines and lines[-1] == "" else len(lines)
            lines.insert(end, f"a=ptime:{ptime_ms}")
            section = eol.join(lines)
        out.append(section)
    return "".join(out)


__all__ = ["ArrivalJitterBuffer", "OPUS_APPLICATIONS", "PTIMES_MS", "PacketOpusEncoder", "set_ptime", "use_encoder"]
