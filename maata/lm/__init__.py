"""The S2S speech LM: listens to the user's codec codes and speaks the agent's, frame by frame."""

from maata.lm.model import (ABSENT_CODE, CUSTOM_VOICE, CUSTOM_VOICE_NAME, EMOTIONS, LM, NOT_FORCED, VOICES, CodeError,
                            ConditioningConfig, DepthConfig, LMConfig, LMConfigError, LMInputError, LMLoss, LMOutput,
                            LMState, LossConfig, NoFreeSlotError, ReferenceClipError, SlotError, SpeakerConfig,
                            StepOutput, TemporalConfig, TextConfig, UnknownConditionError, UnknownEmotionError,
                            UnknownVoiceError, delay_codes, load_preset, preset_names, undelay_codes)
from maata.lm.sampling import GREEDY, SamplingBatch, SamplingError, SamplingParams

__all__ = ["ABSENT_CODE", "CUSTOM_VOICE", "CUSTOM_VOICE_NAME", "EMOTIONS", "LM", "NOT_FORCED", "VOICES", "CodeError",
           "ConditioningConfig", "DepthConfig", "LMConfig", "LMConfigError", "LMInputError", "LMLoss", "LMOutput",
           "LMState", "LossConfig", "NoFreeSlotError", "ReferenceClipError", "SlotError", "SpeakerConfig",
           "StepOutput", "TemporalConfig", "TextConfig", "UnknownConditionError", "UnknownEmotionError",
           "UnknownVoiceError", "delay_codes", "load_preset", "preset_names", "undelay_codes",
           "GREEDY", "SamplingBatch", "SamplingError", "SamplingParams"]
