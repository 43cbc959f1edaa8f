"""Turn detection on the agent's own output, and the output's rhythm, end to end: ``maata serve``'s
stack in this process with the committed demo checkpoints, partner calls over loopback gRPC.

* The agent's speech detector is calibrated on the codec's decoded silence at start-up (the demo
  codec decodes digital silence near -39 dBFS, above a fixed -40 dBFS threshold), so a call where
  the user asks a Telugu question and then listens gets ``speaking`` true only once the agent
  answers (not at frame 1, not while the user talks), ``speaking`` false when it stops, and a
  ``latency`` event for the turn.
* Every ``ServerAudio`` of a call holds exactly 40 ms at the output rate, at 8, 16, 24 and 48 kHz.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from maata.audio import DBFS_FLOOR, resample, rms_dbfs
from maata.served import SERVED_CODEC, SERVED_LM
from services.client import converse
from services.serve import BackgroundStack, load_config
from tests.support.speech import espeak_audio

from maata_protos.v1.common_pb2 import Sampling

ROOT = Path(__file__).resolve().parents[1]
RATES = (8000, 16000, 24000, 48000)
LISTEN_S = 8  # seconds of silence after the question


@pytest.fixture(scope="module")
def question(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    """Half a second of silence, `espeak-ng -v te "మీ పేరు ఏమిటి?"`, then 8 s of listening, at 16 kHz
    (the agent's answers run 2-5 s, so it has time to answer and fall silent again)."""
    speech = espeak_audio(tmp_path_factory.mktemp("wav"))
    return np.concatenate([np.zeros(8000, np.float32), speech, np.zeros(LISTEN_S * 16000, np.float32)])


@pytest.fixture(scope="module")
def stack() -> Iterator[Any]:
    for name in (SERVED_CODEC, SERVED_LM):
        if not (ROOT / name).exists():
            pytest.fail(f"{name} is missing (it is committed)")
    env = {f"MAATA_SERVE__{s}__SERVER__PORT": "0" for s in ("SESSION", "GATEWAY", "CODEC", "GENERATION")}
    env.update({"MAATA_SERVE__GATEWAY__WEBRTC__ENABLED": "false", "MAATA_SERVE__THREADS": "1"})
    config = load_config(environ=env)
    config = dataclasses.replace(config, codec_checkpoint=str(ROOT / config.codec_checkpoint),
                                 lm_checkpoint=str(ROOT / config.lm_checkpoint), tokenizer=str(ROOT / config.tokenizer))
    background = BackgroundStack(config)
    try:
        yield background
    finally:
        background.stop()


def _call(stack: Any, audio: np.ndarray, rate: int, out_rate: int = 0) -> tuple[Any, list[int]]:
    """One lossless call; (result, the byte size of every ServerAudio in arrival order)."""
    s = stack.stack
    sizes: list[int] = []

    def on_event(event: Any) -> None:
        if event.WhichOneof("event") == "audio":
            sizes.append(len(event.audio.pcm16))

    coro = converse(f"127.0.0.1:{s.gateway.port}", s.dev_key, audio, rate, out_rate=out_rate, fast=True,
                    on_event=on_event, sampling=Sampling(temperature=0.8, top_k=50, seed=11))
    return asyncio.run_coroutine_threadsafe(coro, stack.loop).result(120), sizes


def test_agent_speech_is_detected_on_the_codec_output_and_turn_latency_arrives(stack: Any,
                                                                               question: np.ndarray) -> None:
    gateway = stack.stack.gateway.gateway
    agent = gateway.pipeline_config().agent_speech
    silence = gateway.agent_silence_dbfs
    # measured through the real codec at start-up: codec v2 decodes digital silence to digital
    # silence (the dBFS floor), codec v1 to a noise floor near -40 dBFS
    assert silence is not None and DBFS_FLOOR <= silence < -20
    assert agent.on_dbfs >= silence + agent.above_silence_db - 0.01 and agent.off_dbfs > silence

    result, _ = _call(stack, question, 16000)
    assert result.code.name == "OK", result.details
    kinds = [(e.WhichOneof("event"), e) for e in result.events]
    speaking = [(e.speaking.agent_speaking, e.speaking.frame) for k, e in kinds if k == "speaking"]
    latencies = [e.latency for k, e in kinds if k == "latency"]
    user_speech_end = (len(question) - LISTEN_S * 16000) // 640  # the frame where the user's question ends
    seen = (speaking, [(lat.ms, lat.frame_ms) for lat in latencies], user_speech_end)
    assert speaking and speaking[0][0] is True and speaking[0][1] > 12, seen  # not from frame 1 on (silence)
    assert False in [on for on, _ in speaking], seen  # the agent stops again
    answers = [frame for on, frame in speaking if on and frame >= user_speech_end]
    assert answers, seen  # the agent answered the question
    assert latencies and all(0 < lat.ms < 5000 and lat.frame_ms > 0 for lat in latencies), seen
    # the agent's silent frames sit below the calibrated threshold, its speech above it
    audio = result.audio
    levels = [rms_dbfs(audio[i:i + 640]) for i in range(640, audio.size - 639, 640)]
    assert max(levels) > agent.on_dbfs and np.median(levels) < agent.off_dbfs


@pytest.mark.parametrize("rate", RATES)
def test_every_audio_message_is_one_40ms_frame_at_every_rate(stack: Any, question: np.ndarray, rate: int) -> None:
    audio = resample(question[:32000], 16000, rate) if rate != 16000 else question[:32000]
    result, sizes = _call(stack, audio, rate, out_rate=rate)
    assert result.code.name == "OK", result.details
    frame_bytes = 2 * rate * 40 // 1000
    assert len(sizes) >= 45 and set(sizes) == {frame_bytes}, (rate, sorted(set(sizes)))
    assert len(result.audio) == len(result.frames) * frame_bytes // 2
