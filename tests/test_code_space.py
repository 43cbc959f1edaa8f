"""Which codec an LM speaks: ``Codec.code_space()``, the shards' ``code_space.json``, the trainer
recording it in ``LMConfig.codec``, and ``check_compatible`` refusing any other codec.

Two codecs of the same shape (v1 and v2 both give 8 x 1024 codes at 25 Hz) make unrelated codes,
so shape alone cannot pair an LM with its codec."""

from __future__ import annotations

import dataclasses
import shutil

import pytest
import torch

from maata.checkpoint import load_codec, save_model
from maata.data.shards import read_code_space, write_code_space
from maata.lm.checkpoint import load_lm, read_lm_config
from maata.lm.compat import check_compatible
from tests.support.models import tiny_codec, tiny_lm
from tests.support.shards import write_pretrain_shards

torch.set_num_threads(1)


def test_code_space_follows_what_decides_the_codes(tmp_path):
    codec = tiny_codec(torch.float32, seed=0)
    space = codec.code_space()
    assert len(space) == 16 and int(space, 16) >= 0
    # a float16 export of the same weights, and a float64 copy, speak the same codes
    path = save_model(tmp_path / "c.safetensors", codec, codec.cfg, kind="codec", dtype=torch.float16)
    assert load_codec(path).code_space() == space
    assert tiny_codec(torch.float64, seed=0).code_space() == space
    # a decoder-only change keeps the code space; the encoder or a codebook changes it
    with torch.no_grad():
        next(codec.decoder.parameters()).add_(0.5)
        assert codec.code_space() == space
        codec.quantizer.levels[1].embed.mul_(1.5)
        assert codec.code_space() != space
    assert tiny_codec(torch.float32, seed=1).code_space() != space  # same shape, other weights


def test_compat_refuses_another_codec_of_the_same_shape():
    codec_a, codec_b = tiny_codec(torch.float32, seed=0), tiny_codec(torch.float32, seed=1)
    cfg = dataclasses.replace(tiny_lm().cfg, n_q=codec_a.n_q, codebook_size=codec_a.cfg.quantizer.codebook_size)
    check_compatible(cfg, codec_b)  # nothing recorded (older exports): the shape alone
    cfg.codec = codec_a.code_space()
    check_compatible(cfg, codec_a)
    with pytest.raises(ValueError, match=f"trained on the codes of codec {codec_a.code_space()}"):
        check_compatible(cfg, codec_b)
    with pytest.raises(ValueError, match="codebooks x"):
        check_compatible(tiny_lm(), codec_a)  # 8 x 32 codes against 4 x 64


def test_read_code_space_is_none_for_older_shards(tmp_path):
    assert read_code_space(tmp_path) is None
    codec = tiny_codec(torch.float32)
    write_code_space(tmp_path, codec, "somewhere/codec.safetensors")
    (tmp_path / "train").mkdir()
    assert read_code_space(tmp_path) == read_code_space(tmp_path / "train" / "shard-00000.safetensors") \
        == codec.code_space()


def test_trainer_records_the_shards_codec_and_refuses_another(tmp_path):
    from training.lm_trainer import LMTrainer, load_config

    shards = write_pretrain_shards(tmp_path / "shards")
    codec = tiny_codec(torch.float32, seed=0)
    write_code_space(shards, codec)
    cfg = load_config("lm_pretrain_smoke", {"data": {"shards": str(shards)}})
    trainer = LMTrainer(cfg, tmp_path / "run")
    trainer.fit()
    export = trainer.export()
    assert read_lm_config(export).codec == codec.code_space() == load_lm(export).cfg.codec

    # fine-tuning that model on another codec's codes is refused, naming both codecs
    other = tmp_path / "other"
    shutil.copytree(shards, other)
    write_code_space(other, tiny_codec(torch.float32, seed=1))
    cfg2 = load_config("lm_pretrain_smoke", {"data": {"shards": str(other)}, "init_from": str(export)})
    with pytest.raises(ValueError, match=f"trained on the codes of codec {codec.code_space()}"):
        LMTrainer(cfg2, tmp_path / "run2")
