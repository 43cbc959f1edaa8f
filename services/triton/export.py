"""``maata triton export``: a Triton model repository for a codec / LM checkpoint pair.

    repo/
      codec_encoder/config.pbtxt  1/model.py  1/codec.safetensors  warmup/*
      codec_decoder/config.pbtxt  1/model.py  1/codec.safetensors  warmup/*
      s2s_step/config.pbtxt       1/model.py  1/lm.safetensors     warmup/*

Each ``config.pbtxt`` is built as a ``ModelConfig`` message (the protobuf schema ``tritonclient``
ships), written with ``text_format`` and parsed back (``validate_repository``), so it is valid
by construction and byte-identical for the same inputs (the export is deterministic):

* ``backend: "python"``; ``model.py`` names a class of ``services.triton.models``.
* ``sequence_batching`` with the direct strategy and the START / END / READY / CORRID controls:
  a call is a sequence; its state stays in the instance that Triton routes it to.
* ``max_sequence_idle_microseconds`` (``idle_s``) longer than the generation service's 10 s call
  idle timeout (Triton's default of 1 s would end a call at every pause).
* ``max_batch_size`` = ``slots``, the calls one instance serves; ``instance_group`` of
  ``instances`` x KIND_CPU (``kind="gpu"``: KIND_GPU); ``model_warmup`` (one START+END step of
  zeros); ``version_policy`` latest 1.
* parameters: ``checkpoint`` (the weights' file name in the version folder), ``threads``
  (torch threads per instance, 0: torch's default), ``dtype`` (float32 / bfloat16), ``cuda_graphs``
  (GPU only: the streaming cores under ``torch.compile(mode="reduce-overhead")``), ``max_frames``.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from services.triton import schema as m

CODEC_FILE, LM_FILE = "codec.safetensors", "lm.safetensors"
WARMUP_CORRID = 2**64 - 1  # the warmup's own sequence (calls get ids below 2**63)


@dataclass(frozen=True)
class ExportConfig:
    """How the repository serves: slots per instance, instances, device kind and switches."""

    slots: int = 16  # max_batch_size: calls (sequences) one model instance holds
    instances: int = 1  # instance_group count per model
    kind: str = "cpu"  # cpu: KIND_CPU; gpu: KIND_GPU
    dtype: str = "float32"  # float32 | bfloat16 (the S2S step; the codec stays float32)
    cuda_graphs: bool = False  # GPU only: capture the streaming steps (torch.compile reduce-overhead)
    threads: int = 0  # torch threads per instance (0: torch's default)
    idle_s: float = 15.0  # max_sequence_idle: longer than a call's idle timeout (10 s)
    batch_delay_us: int = 0  # direct strategy: wait this long for more sequences' requests ...
    min_slot_utilization: float = 0.0  # ... unless this share of the slots is ready (0: run what is ready)
    max_frames: int = 25  # longest codec request in frames (1 s)

    def __post_init__(self) -> None:
        if self.slots < 1 or self.instances < 1:
            raise ValueError(f"slots and instances must be >= 1, got {self.slots} and {self.instances}")
        if self.kind not in ("cpu", "gpu"):
            raise ValueError(f"kind must be cpu or gpu, got {self.kind!r}")
        if self.dtype not in ("float32", "bfloat16"):
            raise ValueError(f"dtype must be float32 or bfloat16, got {self.dtype!r}")
        if self.cuda_graphs and self.kind != "gpu":
            raise ValueError("cuda_graphs needs kind=gpu (CUDA graphs capture GPU work)")
        if not self.idle_s > 10.0:
            raise ValueError(f"idle_s must exceed the generation service's 10 s call idle timeout, got {self.idle_s}")
        if self.threads < 0 or self.batch_delay_us < 0 or not 0.0 <= self.min_slot_utilization <= 1.0:
            raise ValueError("threads and batch_delay_us must be >= 0, min_slot_utilization in [0, 1]")
        if self.max_frames < 1:
            raise ValueError(f"max_frames must be >= 1, got {self.max_frames}")


def _pb():
    from tritonclient.grpc import model_config_pb2

    return model_config_pb2


def _io(cls, name: str, dtype: str, dims: list[int], optional: bool = False):
    pb = _pb()
    kw = {"optional": True} if optional else {}
    return cls(name=name, data_type=getattr(pb, dtype), dims=dims, **kw)


def model_config(name: str, kind: str, export: ExportConfig, *, n_q: int, hop: int, checkpoint: str) -> object:
    """The ``ModelConfig`` of one model (``kind``: encoder / decoder / s2s)."""
    pb = _pb()
    cfg = pb.ModelConfig(name=name, backend="python", max_batch_size=export.slots)
    cfg.version_policy.latest.num_versions = 1
    inp, out = pb.ModelInput, pb.ModelOutput
    if kind == "encoder":
        cfg.input.extend([_io(inp, m.PCM, "TYPE_FP32", [-1], optional=True)])
        cfg.output.extend([_io(out, m.CODES, "TYPE_INT64", [n_q, -1])])
        data = {m.PCM: ("TYPE_FP32", [hop])}
    elif kind == "decoder":
        cfg.input.extend([_io(inp, m.CODES, "TYPE_INT64", [-1, -1], optional=True)])
        cfg.output.extend([_io(out, m.PCM, "TYPE_FP32", [-1])])
        data = {m.CODES: ("TYPE_INT64", [n_q, 1])}
    else:
        cfg.input.extend([
            _io(inp, m.USER_CODES, "TYPE_INT64", [n_q], optional=True),
            _io(inp, m.VOICE, "TYPE_UINT8", [-1], optional=True),
            _io(inp, m.EMOTION, "TYPE_UINT8", [-1], optional=True),
            _io(inp, m.SEED, "TYPE_INT64", [1], optional=True),
            _io(inp, m.TEMPERATURE, "TYPE_FP32", [1], optional=True),
            _io(inp, m.TOP_K, "TYPE_INT32", [1], optional=True),
            _io(inp, m.HISTORY_USER, "TYPE_INT64", [n_q, -1], optional=True),
            _io(inp, m.HISTORY_AGENT, "TYPE_INT64", [n_q, -1], optional=True),
            _io(inp, m.HISTORY_TEXT, "TYPE_INT64", [-1], optional=True),
            _io(inp, m.HISTORY_VOICE, "TYPE_UINT8", [-1], optional=True),
            _io(inp, m.HISTORY_EMOTION, "TYPE_UINT8", [-1], optional=True),
        ])
        cfg.output.extend([_io(out, m.AGENT_CODES, "TYPE_INT64", [n_q]), _io(out, m.STEP_CODES, "TYPE_INT64", [n_q]),
                           _io(out, m.TEXT_TOKEN, "TYPE_INT64", [1])])
        data = {m.USER_CODES: ("TYPE_INT64", [n_q]), m.SEED: ("TYPE_INT64", [1])}
    seq = cfg.sequence_batching
    seq.max_sequence_idle_microseconds = int(export.idle_s * 1_000_000)
    seq.direct.max_queue_delay_microseconds = export.batch_delay_us
    seq.direct.minimum_slot_utilization = export.min_slot_utilization
    Control = pb.ModelSequenceBatching.Control
    for cname, ckind in ((m.START, Control.CONTROL_SEQUENCE_START), (m.END, Control.CONTROL_SEQUENCE_END),
                         (m.READY, Control.CONTROL_SEQUENCE_READY)):
        seq.control_input.add(name=cname).control.add(kind=ckind, int32_false_true=[0, 1])
    seq.control_input.add(name=m.CORRID).control.add(kind=Control.CONTROL_SEQUENCE_CORRID, data_type=pb.TYPE_UINT64)
    group = cfg.instance_group.add(count=export.instances,
                                   kind=pb.ModelInstanceGroup.KIND_GPU if export.kind == "gpu"
                                   else pb.ModelInstanceGroup.KIND_CPU)
    if export.kind == "gpu":
        group.gpus.append(0)
    warm = cfg.model_warmup.add(name="start_end_zeros", batch_size=1)
    for iname, (dtype, dims) in data.items():
        warm.inputs[iname].CopyFrom(pb.ModelWarmup.Input(data_type=getattr(pb, dtype), dims=dims, zero_data=True))
    for flag in (m.START, m.END, m.READY):
        warm.inputs[flag].CopyFrom(pb.ModelWarmup.Input(data_type=pb.TYPE_INT32, dims=[1], input_data_file="one_int32"))
    warm.inputs[m.CORRID].CopyFrom(pb.ModelWarmup.Input(data_type=pb.TYPE_UINT64, dims=[1],
                                                        input_data_file="warmup_corrid"))
    params = {"checkpoint": checkpoint, "threads": str(export.threads), "dtype": export.dtype,
              "cuda_graphs": "true" if export.cuda_graphs else "false", "max_frames": str(export.max_frames)}
    for key in sorted(params):
        cfg.parameters[key].string_value = params[key]
    return cfg


MODEL_CLASSES = {m.ENCODER: ("encoder", "CodecEncoderModel"), m.DECODER: ("decoder", "CodecDecoderModel"),
                 m.S2S: ("s2s", "S2SStepModel")}


def _model_py(name: str, cls: str) -> str:
    return (f'"""Triton python-backend entry of Maata\'s {name} (written by `maata triton export`;\n'
            f'the model is services.triton.models.{cls})."""\n\n'
            f"from services.triton.models import {cls} as TritonPythonModel  # noqa: F401\n")


def export_repository(out: str | Path, codec_checkpoint: str | Path, lm_checkpoint: str | Path,
                      export: ExportConfig | None = None) -> list[Path]:
    """Write the repository into ``out`` (created; existing model folders are replaced) and
    return the written ``config.pbtxt`` paths. ValueError when the checkpoints do not fit."""
    from google.protobuf import text_format

    from maata.checkpoint import load_codec
    from maata.lm.checkpoint import read_lm_config
    from maata.lm.compat import check_compatible

    export = export or ExportConfig()
    codec_checkpoint, lm_checkpoint = Path(codec_checkpoint), Path(lm_checkpoint)
    for path in (codec_checkpoint, lm_checkpoint):
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint {path} does not exist")
    codec = load_codec(codec_checkpoint)
    codec_nq, hop = codec.n_q, codec.hop
    check_compatible(read_lm_config(lm_checkpoint), codec)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, (kind, cls) in MODEL_CLASSES.items():
        folder = out / name
        if folder.exists():
            shutil.rmtree(folder)
        (folder / "1").mkdir(parents=True)
        (folder / "warmup").mkdir()
        ckpt_src, ckpt_name = (lm_checkpoint, LM_FILE) if kind == "s2s" else (codec_checkpoint, CODEC_FILE)
        shutil.copyfile(ckpt_src, folder / "1" / ckpt_name)
        (folder / "1" / "model.py").write_text(_model_py(name, cls))
        (folder / "warmup" / "one_int32").write_bytes((1).to_bytes(4, "little"))
        (folder / "warmup" / "warmup_corrid").write_bytes(WARMUP_CORRID.to_bytes(8, "little"))
        cfg = model_config(name, kind, export, n_q=codec_nq, hop=hop, checkpoint=ckpt_name)
        path = folder / "config.pbtxt"
        path.write_text(text_format.MessageToString(cfg))
        written.append(path)
    validate_repository(out)
    return written


def validate_repository(repo: str | Path) -> dict[str, object]:
    """Parse every ``config.pbtxt`` under ``repo`` with the ``ModelConfig`` schema and check what
    the services rely on; returns name -> ModelConfig. ValueError names the first problem."""
    from google.protobuf import text_format

    pb = _pb()
    configs = {}
    for name in MODEL_CLASSES:
        path = Path(repo) / name / "config.pbtxt"
        if not path.is_file():
            raise ValueError(f"{path} is missing")
        try:
            cfg = text_format.Parse(path.read_text(), pb.ModelConfig())
        except text_format.ParseError as err:
            raise ValueError(f"{path}: not a valid ModelConfig: {err}") from None
        if cfg.name != name:
            raise ValueError(f"{path}: name {cfg.name!r} should be {name!r}")
        seq = cfg.sequence_batching
        if not cfg.HasField("sequence_batching") or not seq.HasField("direct"):
            raise ValueError(f"{path}: needs sequence_batching with the direct strategy")
        kinds = {c.control[0].kind for c in seq.control_input}
        C = pb.ModelSequenceBatching.Control
        need = {C.CONTROL_SEQUENCE_START, C.CONTROL_SEQUENCE_END, C.CONTROL_SEQUENCE_READY, C.CONTROL_SEQUENCE_CORRID}
        if not need <= kinds:
            raise ValueError(f"{path}: sequence_batching lacks START/END/READY/CORRID controls")
        if seq.max_sequence_idle_microseconds <= 10_000_000:
            raise ValueError(f"{path}: max_sequence_idle_microseconds must exceed the 10 s call idle timeout")
        if cfg.max_batch_size < 1 or not (Path(repo) / name / "1" / "model.py").is_file():
            raise ValueError(f"{path}: needs max_batch_size >= 1 and 1/model.py")
        configs[name] = cfg
    return configs
