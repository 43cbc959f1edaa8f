"""The S2S speech LM: listens to the user's codec codes and speaks the agent's, frame by frame.

Names are imported lazily so that ``maata --help`` and the CLI's command modules, which live
in this package, do not pay for importing torch.
"""

from __future__ import annotations

import importlib

_MODEL = ("ABSENT_CODE", "CUSTOM_VOICE", "CUSTOM_VOICE_NAME", "EMOTIONS", "LM", "NOT_FORCED", "VOICES", "CodeError",
          "ConditioningConfig", "DepthConfig", "LMConfig", "LMConfigError", "LMInputError", "LMLoss", "LMOutput",
          "LMState", "LossConfig", "NoFreeSlotError", "ReferenceClipError", "SlotError", "SpeakerConfig",
          "StepOutput", "TemporalConfig", "TextConfig", "UnknownConditionError", "UnknownEmotionError",
          "UnknownVoiceError", "delay_codes", "load_preset", "preset_names", "undelay_codes")
_SAMPLING = ("GREEDY", "SamplingBatch", "SamplingError", "SamplingParams")
_EXPORTS = {**{name: "maata.lm.model" for name in _MODEL}, **{name: "maata.lm.sampling" for name in _SAMPLING}}

__all__ = [*_MODEL, *_SAMPLING]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'maata.lm' has no attribute {name!r}")
