"""The tensors of Maata's Triton models: names, what they hold, the model names.

Shared by the export (``config.pbtxt``), the python-backend models and the client. Every tensor
has Triton's leading batch dimension of 1 per request (not shown below).
"""

# the sequence batcher's control inputs (int32 0/1 flags, uint64 correlation id)
START, END, READY, CORRID = "START", "END", "READY", "CORRID"
# codec_encoder
PCM = "PCM"  # fp32 [n]: whole frames of mono PCM at the codec's rate (40 ms = one frame by default)
CODES = "CODES"  # int64 [n_q, f]: encoder output / decoder input (decoder: 1..n_q codebooks, -1 = dropped level)
# s2s_step
USER_CODES = "USER_CODES"  # int64 [n_q]: the user's codes of this frame (-1: absent level)
VOICE, EMOTION = "VOICE", "EMOTION"  # uint8 [n], UTF-8: the style from this step on (START without: the default)
SEED = "SEED"  # int64 [1], START only: the call's sampling seed
TEMPERATURE, TOP_K = "TEMPERATURE", "TOP_K"  # fp32 [1], int32 [1], START only (temperature 0: greedy)
HISTORY_USER, HISTORY_AGENT = "HISTORY_USER", "HISTORY_AGENT"  # int64 [n_q, T], START only: resume (frame layout)
HISTORY_TEXT = "HISTORY_TEXT"  # int64 [T], START only: the stored text tokens
HISTORY_VOICE, HISTORY_EMOTION = "HISTORY_VOICE", "HISTORY_EMOTION"  # uint8 UTF-8, one line per stored step
AGENT_CODES = "AGENT_CODES"  # int64 [n_q]: the agent frame completed at this step (-1s before the delay)
STEP_CODES = "STEP_CODES"  # int64 [n_q]: codes drawn at this step, step layout (the LM's BOS before the delay)
TEXT_TOKEN = "TEXT_TOKEN"  # int64 [1]: text token begun at this step (-1: the model has no text)

ENCODER, DECODER, S2S = "codec_encoder", "codec_decoder", "s2s_step"
