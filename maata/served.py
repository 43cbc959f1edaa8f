"""The models Maata serves: one codec and the speech LM trained on its codes, named once here.

``make run``, ``maata serve``, ``maata talk``, ``maata codec demo``, the Triton export and the
benchmarks default to this pair. They must stay a matched pair: the LM reads and writes the
codec's codes, and its config records which codec that is (``LMConfig.codec``, checked by
:func:`maata.lm.compat.check_compatible`). Paths are relative to the repository root. This
module imports nothing, so command-line parsers can use it at load time.
"""

SERVED_CODEC = "checkpoints/codec_v2.safetensors"  # the codec whose codes SERVED_LM was trained on
SERVED_LM = "checkpoints/lm_demo.safetensors"  # the full-duplex speech LM
SERVED_TOKENIZER = "checkpoints/tokenizer.json"  # the LM's text tokenizer (the agent's inner monologue)

__all__ = ["SERVED_CODEC", "SERVED_LM", "SERVED_TOKENIZER"]
