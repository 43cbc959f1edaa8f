"""The tiny models and dialogue shards that the LM evaluation tests share (tests/conftest.py
makes them once per session): an untrained codec and LM saved as checkpoints, and dialogue
shards written with the codec's own silence codes outside the turns plus a reference split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from maata.checkpoint import save_model
from maata.codec import Codec
from maata.codec import load_preset as codec_preset
from maata.data.shards import Record, write_shard
from maata.lm.model import EMOTIONS, LM, VOICES, load_preset
from tests.support.models import TINY_FRAME
from tests.support.shards import CARD, INTENTS, K, VT, answer_codes, write_dialogue_shards

HOP = 640


def tiny_codec(n_q: int = K, card: int = CARD) -> Codec:
    cfg = codec_preset("default", env_prefix=None, frame=TINY_FRAME,
        base_channels=4, max_channels=16, latent_dim=16,
                       transformer={"layers": 1, "heads": 2}, quantizer={"n_q": n_q, "codebook_size": card,
                                                                      "codebook_dim": 4},
                       semantic={"enabled": False})
    torch.manual_seed(0)
    return Codec(cfg).eval()


def tiny_lm() -> LM:
    cfg = load_preset("tiny", env_prefix=None, codebook_size=CARD,
                      temporal={"dim": 32, "layers": 1, "heads": 2, "context": 32},
                      depth={"dim": 32, "layers": 1, "heads": 2}, text={"vocab_size": VT},
                      conditioning={"speaker": {"dim": 16, "hidden": 16, "layers": 1, "heads": 2, "min_frames": 4,
                                                "max_frames": 32}})
    torch.manual_seed(0)
    return LM(cfg).eval()


def save_models(root: Path) -> dict[str, Path]:
    """The tiny codec (8 and 4 codebooks) and LM saved as checkpoints under ``root``."""
    codec, lm = tiny_codec(), tiny_lm()
    small = tiny_codec(n_q=4)
    return {"codec": save_model(root / "codec.safetensors", codec, codec.cfg, kind="codec"),
            "lm": save_model(root / "lm.safetensors", lm, lm.cfg, kind="lm"),
            "codec_n4": save_model(root / "codec4.safetensors", small, small.cfg, kind="codec")}


def write_shards(root: Path, codec_path: Path) -> Path:
    """Dialogue shards in ``root`` (train/test, the codec's silence codes outside the turns)
    and the builder's reference split."""
    from maata.checkpoint import load_codec

    codec = load_codec(codec_path)
    silence = codec.encode(torch.zeros(1, 1, 20 * HOP))[0, :, -1].numpy()
    root = write_dialogue_shards(root, n_train=9, n_valid=0, n_test=6,
                                 by_folder=True, silence=silence)
    # the builder's reference/ split: every intent's answer in every voice, single stream, silence around it
    recs = []
    for k, intent in enumerate(INTENTS):
        for voice in VOICES[:2]:
            codes = answer_codes(intent, voice, silence)
            pad = np.repeat(silence[:, None], 3, 1)
            recs.append(Record({"codes": np.concatenate([pad, codes, pad], 1).astype(np.int16)},
                               {"id": f"ref-{intent}-{voice}", "kind": "reference", "intent": intent, "voice": voice,
                                "emotion": EMOTIONS[1 + k]}))
    write_shard(root / "reference" / "shard0.safetensors", recs)
    return root


def lm_cli(argv: list[str], monkeypatch) -> int:
    """``maata <argv>`` with only the LM commands loaded."""
    from maata import cli

    monkeypatch.setattr(cli, "COMMAND_MODULES", ["maata.lm.commands"])
    return cli.main(argv)


__all__ = ["HOP", "lm_cli", "save_models", "tiny_codec", "tiny_lm", "write_shards"]
