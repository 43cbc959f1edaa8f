"""The python-backend models of Maata's Triton repository (``maata triton export`` writes a
``model.py`` naming one of these as ``TritonPythonModel``).

Each is stateful under Triton's sequence batcher (direct strategy): a call is a sequence whose
requests carry the START / END / READY / CORRID control tensors. The model instance keeps the
streaming state of ``max_batch_size`` slots (``Codec.init_state`` / ``LM.init_state``) and a
``SequenceTable`` mapping correlation ids onto them, so only one step's input crosses the wire:
40 ms of PCM (``codec_encoder``), one frame of codes (``codec_decoder``, ``s2s_step``).

One ``execute`` gets every request Triton batched (at most one per sequence) and answers each:

1. every request is validated on its own; a bad one gets its own error response (INVALID_ARG)
   and changes nothing (a rejected START starts nothing), so no other sequence is harmed;
2. STARTs take a slot (reset; the S2S step also sets the call's seed, sampling and style, and
   rebuilds the slot from a stored history with ``LM.prefill`` when the START carries one);
3. ONE batched step runs over the slots of every valid request carrying input (the codec lanes
   of ``services.codec.engine``; ``LM.step`` with an active mask), so a slot's result does not
   depend on its batch mates;
4. ENDs free their slots (a request with END and no input only ends the sequence).

Tensor names and what they hold are the constants of ``services.triton.schema`` (``export`` writes them into each
``config.pbtxt``; ``services.triton.client`` sends them). Every tensor has Triton's leading
batch dimension of 1 per request.
"""

from __future__ import annotations

import json
import logging
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import torch

from services.triton.schema import (AGENT_CODES, CODES, CORRID, EMOTION, END, HISTORY_AGENT, HISTORY_EMOTION,
                                    HISTORY_TEXT, HISTORY_USER, HISTORY_VOICE, PCM, SEED, START, STEP_CODES,
                                    TEMPERATURE, TEXT_TOKEN, TOP_K, USER_CODES, VOICE)
from services.triton.sequences import SequenceError, SequenceTable

log = logging.getLogger("maata.triton")




class InputError(ValueError):
    """A request whose tensors are wrong for this model (answered INVALID_ARG)."""


def _flag(request: Any, pb: Any, name: str) -> bool:
    """A sequence control flag (int32 0/1; absent: 0)."""
    t = _tensor(request, pb, name, np.int32, required=False)
    return t is not None and bool(t.reshape(-1)[0])


def _tensor(request: Any, pb: Any, name: str, dtype: Any, required: bool = True) -> np.ndarray | None:
    """Input ``name`` without its batch dimension of 1 (None when absent and not required).
    Read through DLPack: the stub's numpy path reads numpy 1.x internals (see ``_output``)."""
    t = pb.get_input_tensor_by_name(request, name)
    if t is None:
        if required:
            raise InputError(f"input {name} is missing")
        return None
    a = torch.utils.dlpack.from_dlpack(t.to_dlpack()).cpu().numpy()
    if a.ndim < 1 or a.shape[0] != 1:
        raise InputError(f"{name}: one request carries one sequence's step (batch dimension 1), got shape {a.shape}")
    a = a[0]
    if a.dtype != dtype:
        raise InputError(f"{name} must be {np.dtype(dtype).name}, got {a.dtype}")
    return a


def _text(request: Any, pb: Any, name: str) -> list[str] | None:
    """A text input: UTF-8 bytes (uint8 [n]), a list as lines (None when absent). Text travels as
    uint8, not Triton's BYTES type, whose deserialisation in this stub crashes under numpy 2."""
    a = _tensor(request, pb, name, np.uint8, required=False)
    if a is None:
        return None
    try:
        text = a.tobytes().decode()
    except UnicodeDecodeError:
        raise InputError(f"{name} must be UTF-8 text") from None
    return text.split("\n") if text else []


def _output(pb: Any, name: str, a: np.ndarray) -> Any:
    """An output tensor (with the batch dimension of 1), handed over by DLPack: the stub's numpy
    path reads numpy 1.x array internals and sends numpy 2 arrays as empty tensors."""
    return pb.Tensor.from_dlpack(name, torch.from_numpy(np.array(a[None], copy=True, order="C")))


def _state_view(state: Any, n: int) -> Any:
    """An ``LMState``'s first ``n`` slots as a state of its own (views: a step writes through)."""
    from maata.lm.model import LMState

    if n == state.batch:
        return state
    return LMState(keys=[k[:n] for k in state.keys], values=[v[:n] for v in state.values], pos=state.pos[:n],
                   recent=state.recent[:n], prev_text=state.prev_text[:n], seed=state.seed[:n],
                   in_use=state.in_use[:n])


class _SequenceModel:
    """What the three models share: config, controls, validation, error responses, the table."""

    DATA: str  # the input that carries a step (a request without it must be an END)

    def initialize(self, args: dict[str, Any]) -> None:
        import triton_python_backend_utils as pb_utils

        self.pb = pb_utils
        self.model_config = json.loads(args["model_config"])
        self.name = self.model_config.get("name", self.DATA)
        self.params = {k: v.get("string_value", "") for k, v in self.model_config.get("parameters", {}).items()}
        self.max_batch = int(self.model_config["max_batch_size"])
        idle_us = int(self.model_config["sequence_batching"].get("max_sequence_idle_microseconds", 1_000_000))
        threads = int(self.params.get("threads", "0") or 0)
        if threads > 0:
            torch.set_num_threads(threads)
        gpu = args.get("model_instance_kind") == "GPU"
        self.device = torch.device(f"cuda:{args.get('model_instance_device_id', 0)}" if gpu else "cpu")
        self.dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[self.params.get("dtype", "float32")]
        self.cuda_graphs = self.params.get("cuda_graphs", "false") == "true"
        version_dir = Path(args["model_repository"]) / str(args["model_version"])
        self.load(version_dir / self.params["checkpoint"])
        self.table = SequenceTable(self.max_batch, idle_us / 1e6, self.open_slot, self.close_slot)

    # -- per model ---------------------------------------------------------------------------------
    def load(self, checkpoint: Path) -> None:
        raise NotImplementedError

    def open_slot(self) -> int:
        raise NotImplementedError

    def close_slot(self, slot: int) -> None:
        raise NotImplementedError

    def parse(self, request: Any, start: bool) -> Any:
        """The request's step input, validated (InputError)."""
        raise NotImplementedError

    def on_start(self, slot: int, request: Any, payload: Any) -> None:
        """A START's extra settings (InputError: the slot is freed again)."""

    def step(self, items: list[tuple[int, Any]]) -> list[dict[str, np.ndarray]]:
        """ONE batched step over (slot, payload) items: each item's output tensors."""
        raise NotImplementedError

    # -- Triton's entry points ---------------------------------------------------------------------------
    def execute(self, requests: list[Any]) -> list[Any]:
        pb = self.pb
        responses: list[Any] = [None] * len(requests)
        work: list[tuple[int, int, Any, bool]] = []  # (request index, slot, payload, end)
        ending: list[int] = []
        for i, request in enumerate(requests):
            try:
                corrid = int(_tensor(request, pb, CORRID, np.uint64).reshape(-1)[0])
                start, end = _flag(request, pb, START), _flag(request, pb, END)
                has_data = pb.get_input_tensor_by_name(request, self.DATA) is not None
                if not has_data and not end:
                    raise InputError(f"input {self.DATA} is missing (only a request with END may come without it)")
                if end and not has_data and not start:  # only the end: free the slot (if the sequence has one)
                    self.table.release(corrid)
                    responses[i] = pb.InferenceResponse(output_tensors=[])
                    continue
                payload = self.parse(request, start) if has_data else None
                if start:
                    seq = self.table.start(corrid)
                    try:
                        self.on_start(seq.slot, request, payload)
                    except Exception:
                        self.table.release(corrid)
                        raise
                else:
                    seq = self.table.get(corrid)
                if has_data:
                    work.append((i, seq.slot, payload, end))
                else:
                    responses[i] = pb.InferenceResponse(output_tensors=[])
                if end:
                    ending.append(corrid)
            except (InputError, SequenceError) as err:
                responses[i] = self._error(str(err), "INVALID_ARG")
            except Exception as err:  # a bug, not bad input: this request fails, the others go on
                log.error("%s: request failed: %s", self.name, traceback.format_exc())
                responses[i] = self._error(f"{type(err).__name__}: {err}", "INTERNAL")
        if work:
            try:
                outs = self.step([(slot, payload) for _, slot, payload, _ in work])
                for (i, *_), out in zip(work, outs, strict=True):
                    responses[i] = pb.InferenceResponse(output_tensors=[_output(pb, name, a) for name, a in out.items()])
            except Exception as err:
                log.error("%s: batched step failed: %s", self.name, traceback.format_exc())
                for i, *_ in work:
                    responses[i] = self._error(f"batched step failed: {type(err).__name__}: {err}", "INTERNAL")
        for corrid in ending:
            self.table.release(corrid)
        return responses

    def _error(self, message: str, code: str) -> Any:
        err_cls = self.pb.TritonError
        code_value = getattr(err_cls, code, None)
        err = err_cls(f"{self.name}: {message}", code_value) if code_value is not None else err_cls(f"{self.name}: {message}")
        return self.pb.InferenceResponse(output_tensors=[], error=err)

    def finalize(self) -> None:
        pass


class _CodecLaneModel(_SequenceModel):
    """What the two codec models share: the codec loaded once, one ``services.codec.engine`` lane
    over the slots, at most ``max_frames`` frames a request, and a step that pushes every item
    into its slot and runs the lane once over them."""

    OUTPUT: str  # the output tensor a step answers with

    def make_lane(self, codec: Any) -> Any:
        raise NotImplementedError

    def output(self, out: torch.Tensor) -> np.ndarray:
        """One slot's lane result as the ``OUTPUT`` tensor."""
        raise NotImplementedError

    def load(self, checkpoint: Path) -> None:
        from maata.checkpoint import load_codec

        codec = load_codec(checkpoint, self.device)
        if self.cuda_graphs:
            codec.compile_streaming()
        self.hop = codec.hop
        self.max_frames = int(self.params.get("max_frames", "25"))
        self.lane = self.make_lane(codec)

    def open_slot(self) -> int:
        return self.lane.open()

    def close_slot(self, slot: int) -> None:
        self.lane.close(slot)

    def step(self, items: list[tuple[int, Any]]) -> list[dict[str, np.ndarray]]:
        for slot, payload in items:
            self.lane.push(slot, payload)
        with torch.no_grad():
            out = self.lane.run([slot for slot, _ in items])
        return [{self.OUTPUT: self.output(out[slot])} for slot, _ in items]


class CodecEncoderModel(_CodecLaneModel):
    """PCM in (whole frames, fp32 [n]), codes out (int64 [n_q, n / hop])."""

    DATA, OUTPUT = PCM, CODES

    def make_lane(self, codec: Any) -> Any:
        from services.codec.engine import EncoderLane

        return EncoderLane(codec, self.max_batch)

    def output(self, out: torch.Tensor) -> np.ndarray:
        return out.cpu().numpy().astype(np.int64)

    def parse(self, request: Any, start: bool) -> torch.Tensor:
        pcm = _tensor(request, self.pb, PCM, np.float32)
        n = pcm.shape[-1] if pcm.ndim == 1 else -1
        max_samples = self.max_frames * self.hop
        if n <= 0 or n % self.hop or n > max_samples:
            raise InputError(f"{PCM} must be whole frames: [n] samples with n a multiple of {self.hop} "
                             f"(one frame = {self.hop}) and at most {max_samples}; got shape {pcm.shape}")
        if not np.isfinite(pcm).all():
            raise InputError(f"{PCM} contains NaN or infinite samples")
        return self.lane.prepare(torch.from_numpy(pcm.copy()))


class CodecDecoderModel(_CodecLaneModel):
    """Codes in (int64 [k, f], 1 <= k <= n_q, -1 = dropped level), PCM out (fp32 [f * hop])."""

    DATA, OUTPUT = CODES, PCM

    def make_lane(self, codec: Any) -> Any:
        from services.codec.engine import DecoderLane

        return DecoderLane(codec, self.max_batch)

    def output(self, out: torch.Tensor) -> np.ndarray:
        return out.float().cpu().numpy()

    def parse(self, request: Any, start: bool) -> torch.Tensor:
        from maata.codec import CodeError

        codes = _tensor(request, self.pb, CODES, np.int64)
        if codes.ndim != 2 or not 1 <= codes.shape[1] <= self.max_frames:
            raise InputError(f"{CODES} must be shaped [codebooks, frames] with 1..{self.max_frames} frames; "
                             f"got {codes.shape}")
        try:
            return self.lane.prepare(torch.from_numpy(codes.copy()))
        except (CodeError, ValueError) as err:
            raise InputError(f"{CODES}: {err}") from None


class S2SStepModel(_SequenceModel):
    """One frame of the full-duplex LM per request: user codes in, the agent's frame out."""

    DATA = USER_CODES

    def load(self, checkpoint: Path) -> None:
        from maata.lm.checkpoint import load_lm

        self.lm = load_lm(checkpoint, self.device).to(self.dtype).eval()
        if self.cuda_graphs:
            self.lm.temporal.step = torch.compile(self.lm.temporal.step, mode="reduce-overhead")
        self.state = self.lm.init_state(self.max_batch)
        self.style: dict[int, tuple[str, str]] = {}
        self.sampling: dict[int, Any] = {}

    def open_slot(self) -> int:
        return self.lm.acquire_slot(self.state, seed=0)

    def close_slot(self, slot: int) -> None:
        self.lm.release_slot(self.state, slot)
        self.style.pop(slot, None)
        self.sampling.pop(slot, None)

    def _style(self, request: Any, current: tuple[str, str] | None) -> tuple[str, str]:
        from maata.lm import UnknownEmotionError, UnknownVoiceError
        from services.generation.engine import resolve_style

        v = "".join(_text(request, self.pb, VOICE) or [])
        e = "".join(_text(request, self.pb, EMOTION) or [])
        try:
            return resolve_style(self.lm, v, e, current)
        except (UnknownVoiceError, UnknownEmotionError) as err:
            raise InputError(str(err)) from None

    def parse(self, request: Any, start: bool) -> tuple[torch.Tensor, tuple[str, str] | None]:
        from maata.lm import CodeError
        from services.generation.engine import check_codes

        codes = _tensor(request, self.pb, USER_CODES, np.int64)
        try:
            frame = check_codes(self.lm, codes.reshape(-1).tolist() if codes.ndim == 1 else [], USER_CODES)
        except CodeError as err:
            raise InputError(str(err)) from None
        if codes.ndim != 1:
            raise InputError(f"{USER_CODES} must be shaped [{self.lm.n_q}], got {codes.shape}")
        has_style = any(self.pb.get_input_tensor_by_name(request, n) is not None for n in (VOICE, EMOTION))
        style = self._style(request, None) if start or has_style else None
        return torch.tensor(frame, dtype=torch.long), style

    def on_start(self, slot: int, request: Any, payload: Any) -> None:
        from maata.lm import CodeError, LMInputError
        from services.generation.engine import sampling_params

        pb = self.pb
        seed = _tensor(request, pb, SEED, np.int64, required=False)
        if seed is None:
            raise InputError(f"a START needs {SEED} (the call's sampling seed)")
        temperature = _tensor(request, pb, TEMPERATURE, np.float32, required=False)
        top_k = _tensor(request, pb, TOP_K, np.int32, required=False)
        try:
            from maata.lm import SamplingParams

            default = SamplingParams()
            self.sampling[slot] = sampling_params(
                float(temperature.reshape(-1)[0]) if temperature is not None else default.temperature,
                int(top_k.reshape(-1)[0]) if top_k is not None else default.top_k)
        except ValueError as err:
            raise InputError(str(err)) from None
        seed_value = int(seed.reshape(-1)[0])
        if payload is not None and payload[1] is not None:
            self.style[slot] = payload[1]
        else:
            self.style[slot] = self._style(request, None)
        user = _tensor(request, pb, HISTORY_USER, np.int64, required=False)
        if user is None:
            self.lm.reset(self.state, self._mask(slot), seed=seed_value)
            return
        agent = _tensor(request, pb, HISTORY_AGENT, np.int64)
        text = _tensor(request, pb, HISTORY_TEXT, np.int64, required=False)
        voices, emotions = _text(request, pb, HISTORY_VOICE), _text(request, pb, HISTORY_EMOTION)
        if voices is None or emotions is None:
            raise InputError(f"a START with {HISTORY_USER} needs {HISTORY_VOICE} and {HISTORY_EMOTION}")
        T = agent.shape[-1] if agent.ndim == 2 else -1
        if len(voices) != T or len(emotions) != T:
            raise InputError(f"{HISTORY_VOICE}/{HISTORY_EMOTION} must hold one entry per stored step ({T}), got "
                             f"{len(voices)}/{len(emotions)}")
        try:
            self.lm.prefill(self.state, slot, torch.from_numpy(user.copy()), torch.from_numpy(agent.copy()),
                            torch.from_numpy(text.copy()) if text is not None else None,
                            voice=voices or None, emotion=emotions or None, seed=seed_value)
        except (CodeError, LMInputError, ValueError) as err:
            raise InputError(f"stored history: {err}") from None

    def _mask(self, slot: int) -> torch.Tensor:
        m = torch.zeros(self.state.batch, dtype=torch.bool)
        m[slot] = True
        return m

    def step(self, items: list[tuple[int, Any]]) -> list[dict[str, np.ndarray]]:
        lm = self.lm
        n = max(slot for slot, _ in items) + 1
        user = torch.zeros(n, lm.n_q, dtype=torch.long)
        active = torch.zeros(n, dtype=torch.bool)
        voice, emotion = [lm.voices[0]] * n, [lm.emotions[0]] * n
        sampling: list[Any] = [None] * n
        for slot, (codes, style) in items:
            if style is not None:
                self.style[slot] = style
            user[slot] = codes
            active[slot] = True
            voice[slot], emotion[slot] = self.style[slot]
            sampling[slot] = self.sampling[slot]
        with torch.no_grad():
            out = lm.step(_state_view(self.state, n), user.to(self.state.pos.device), active.to(self.state.pos.device),
                          voice=voice, emotion=emotion, sampling=sampling)
        agent, steps, text = out.agent_codes.cpu().numpy(), out.step_codes.cpu().numpy(), out.text_token.cpu().numpy()
        return [{AGENT_CODES: agent[slot].astype(np.int64), STEP_CODES: steps[slot].astype(np.int64),
                 TEXT_TOKEN: text[slot:slot + 1].astype(np.int64)} for slot, _ in items]
