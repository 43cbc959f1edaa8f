"""The services' side of the Triton models, over ``tritonclient.grpc.aio``.

``TritonModels`` holds one gRPC connection to a ``tritonserver`` and sends one sequence step
per call: ``encode`` (whole frames of PCM -> codes), ``decode`` (codes -> PCM) and ``s2s_step``
(one user frame -> the agent's frame), each with Triton's sequence id (our correlation id),
``sequence_start`` on a call's first request and ``sequence_end`` on its last (``end``: a
request that only ends the sequence).

Errors become two exceptions the services map to gRPC status codes:

* ``TritonUnavailableError``: the server cannot be reached, is not ready, or no longer holds the
  sequence's state (it restarted or dropped the sequence): the call ends UNAVAILABLE and is
  resumed from the session store (a new sequence whose START carries the stored history);
* ``TritonInputError``: Triton or the model refused the request's tensors (INVALID_ARGUMENT); the
  client then ends the sequence, so that its batch slot in Triton is not held until the idle timeout.
"""

from __future__ import annotations

import contextlib
import secrets
from dataclasses import dataclass
from typing import Any

import numpy as np

from services.common.model_backend import ModelBackendUnavailable
from services.triton import schema as m


class TritonError(RuntimeError):
    """A request to Triton failed."""


class TritonUnavailableError(TritonError, ModelBackendUnavailable):
    """Triton is down, not ready, or lost the sequence's state: resume the call later."""


class TritonInputError(TritonError, ValueError):
    """Triton or the model refused the request's tensors."""


# status codes that mean "the server or the sequence is gone", not "your input is wrong"
_UNAVAILABLE = {"StatusCode.UNAVAILABLE", "StatusCode.DEADLINE_EXCEEDED", "StatusCode.CANCELLED",
                "StatusCode.INTERNAL", "StatusCode.UNKNOWN", "StatusCode.NOT_FOUND", "StatusCode.ABORTED",
                "StatusCode.RESOURCE_EXHAUSTED"}
_LOST_STATE = ("no state in this model instance", "must specify the START flag", "has been terminated",
               "unknown sequence", "is not ready", "unavailable")


def _classify(err: Exception) -> TritonError:
    status = str(getattr(err, "status", lambda: "")() or "")
    message = str(getattr(err, "message", lambda: "")() or err)
    lost = any(s in message.lower() for s in (x.lower() for x in _LOST_STATE))
    if status in _UNAVAILABLE or lost or not status:
        return TritonUnavailableError(f"triton: {message}")
    return TritonInputError(f"triton: {message}")


def new_sequence_id() -> int:
    """A fresh correlation id (random 63 bits, never 0; the warmup uses 2**64 - 1)."""
    return secrets.randbits(63) or 1


@dataclass
class StepResult:
    agent_codes: list[int]  # -1s before the acoustic delay has passed
    step_codes: list[int]  # step layout, the LM's BOS where nothing was drawn
    text_token: int


class TritonModels:
    """A connection to the three models of an exported repository on a running tritonserver."""

    def __init__(self, url: str, *, timeout_s: float = 5.0, encoder: str = m.ENCODER, decoder: str = m.DECODER,
                 s2s: str = m.S2S) -> None:
        import tritonclient.grpc.aio as grpcclient

        self.url = url
        self.timeout_s = timeout_s
        self.names = {"encoder": encoder, "decoder": decoder, "s2s": s2s}
        self._g = grpcclient
        # reconnect within a second of a restarted server (gRPC's default backoff grows to minutes)
        self.client = grpcclient.InferenceServerClient(url, channel_args=[
            ("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20),
            ("grpc.initial_reconnect_backoff_ms", 200), ("grpc.min_reconnect_backoff_ms", 200),
            ("grpc.max_reconnect_backoff_ms", 1000)])

    async def close(self) -> None:
        await self.client.close()

    async def ready(self, models: tuple[str, ...] = ("encoder", "decoder", "s2s")) -> bool:
        """Server live and the named models (by role) ready; False on any error."""
        try:
            if not await self.client.is_server_ready(client_timeout=self.timeout_s):
                return False
            for role in models:
                if not await self.client.is_model_ready(self.names[role], client_timeout=self.timeout_s):
                    return False
            return True
        except Exception:
            return False

    # -- requests --------------------------------------------------------------------------------
    def _input(self, name: str, array: np.ndarray, dtype: str) -> Any:
        a = np.ascontiguousarray(array)[None]
        t = self._g.InferInput(name, list(a.shape), dtype)
        t.set_data_from_numpy(a)
        return t

    async def _infer(self, role: str, seq_id: int, inputs: list[Any], outputs: list[str], *, start: bool,
                     end: bool) -> dict[str, np.ndarray]:
        from tritonclient.utils import InferenceServerException

        try:
            result = await self.client.infer(
                self.names[role], inputs, outputs=[self._g.InferRequestedOutput(o) for o in outputs],
                sequence_id=seq_id, sequence_start=start, sequence_end=end, client_timeout=self.timeout_s)
        except InferenceServerException as err:
            failed: TritonError = _classify(err)
        except Exception as err:  # the channel itself failed
            failed = TritonUnavailableError(f"triton: {type(err).__name__}: {err}")
        else:
            return {o: np.array(result.as_numpy(o)[0]) for o in outputs}  # owned, writable copies
        if not end and not isinstance(failed, TritonUnavailableError):
            # the model refused the request, but Triton's sequence batcher holds the sequence's batch slot
            # (a refused START included) until an END or the idle timeout: give it back now
            with contextlib.suppress(Exception):
                await self.client.infer(self.names[role], [], sequence_id=seq_id, sequence_end=True,
                                        client_timeout=self.timeout_s)
        raise failed

    async def end(self, role: str, seq_id: int) -> None:
        """End ``seq_id``'s sequence without a step (its slot is freed)."""
        await self._infer(role, seq_id, [], [], start=False, end=True)

    async def encode(self, seq_id: int, pcm: np.ndarray, *, start: bool = False, end: bool = False) -> np.ndarray:
        """Whole frames of float PCM [n] -> codes int64 [n_q, n / hop]."""
        out = await self._infer("encoder", seq_id, [self._input(m.PCM, pcm.astype(np.float32), "FP32")], [m.CODES],
                                start=start, end=end)
        return out[m.CODES]

    async def decode(self, seq_id: int, codes: np.ndarray, *, start: bool = False, end: bool = False) -> np.ndarray:
        """Codes int64 [k, f] (-1: dropped level) -> float PCM [f * hop]."""
        out = await self._infer("decoder", seq_id, [self._input(m.CODES, codes.astype(np.int64), "INT64")], [m.PCM],
                                start=start, end=end)
        return out[m.PCM]

    async def s2s_step(self, seq_id: int, user_codes: list[int], *, start: bool = False, end: bool = False,
                       seed: int | None = None, temperature: float | None = None, top_k: int | None = None,
                       voice: str | None = None, emotion: str | None = None,
                       history: dict[str, Any] | None = None) -> StepResult:
        """One frame of the S2S model for ``seq_id``. A START carries the call's ``seed`` and
        sampling, and ``history`` (``s2s_history``) when the call resumes."""
        inputs = [self._input(m.USER_CODES, np.asarray(user_codes, dtype=np.int64), "INT64")]
        if voice:
            inputs.append(self._input(m.VOICE, utf8(voice), "UINT8"))
        if emotion:
            inputs.append(self._input(m.EMOTION, utf8(emotion), "UINT8"))
        if seed is not None:
            inputs.append(self._input(m.SEED, np.array([seed], dtype=np.int64), "INT64"))
        if temperature is not None:
            inputs.append(self._input(m.TEMPERATURE, np.array([temperature], dtype=np.float32), "FP32"))
        if top_k is not None:
            inputs.append(self._input(m.TOP_K, np.array([top_k], dtype=np.int32), "INT32"))
        for name, (array, dtype) in (history or {}).items():
            inputs.append(self._input(name, array, dtype))
        out = await self._infer("s2s", seq_id, inputs, [m.AGENT_CODES, m.STEP_CODES, m.TEXT_TOKEN], start=start,
                                end=end)
        return StepResult(out[m.AGENT_CODES].tolist(), out[m.STEP_CODES].tolist(), int(out[m.TEXT_TOKEN][0]))


def utf8(text: str) -> np.ndarray:
    """Text as the models take it: UTF-8 bytes in a uint8 tensor."""
    return np.frombuffer(text.encode(), dtype=np.uint8).copy()


def s2s_history(user: Any, agent_frames: Any, text: Any | None, voices: list[str], emotions: list[str]
                ) -> dict[str, tuple[np.ndarray, str]]:
    """A stored history as the START inputs of ``s2s_step`` (user and agent [n_q, T] frame layout,
    text [T] or None, the style of every step)."""
    h = {m.HISTORY_USER: (np.asarray(user, dtype=np.int64), "INT64"),
         m.HISTORY_AGENT: (np.asarray(agent_frames, dtype=np.int64), "INT64"),
         m.HISTORY_VOICE: (utf8("\n".join(voices)), "UINT8"),
         m.HISTORY_EMOTION: (utf8("\n".join(emotions)), "UINT8")}
    if text is not None:
        h[m.HISTORY_TEXT] = (np.asarray(text, dtype=np.int64), "INT64")
    return h
