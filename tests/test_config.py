"""Layered YAML configs with environment overrides."""

from dataclasses import dataclass, field

import pytest

from maata import config as cfglib
from maata.codec import load_preset, preset_names


@dataclass
class Inner:
    n: int = 1
    rate: float = 0.5
    names: tuple[str, ...] = ("a",)


@dataclass
class Outer:
    name: str = "x"
    inner: Inner = field(default_factory=Inner)
    flag: bool = False


def test_base_overlay_and_env(tmp_path):
    (tmp_path / "base.yaml").write_text("name: base\ninner: {n: 2, rate: 1}\n")
    (tmp_path / "child.yaml").write_text("base: base.yaml\ninner: {n: 3}\n")
    cfg = cfglib.load(Outer, tmp_path / "child.yaml", env_prefix="T_",
                      environ={"T_INNER__RATE": "0.25", "T_FLAG": "true", "T_INNER__NAMES": "[p, q]"})
    assert cfg == Outer(name="base", inner=Inner(n=3, rate=0.25, names=("p", "q")), flag=True)
    assert isinstance(cfg.inner.rate, float)


def test_unknown_keys_and_wrong_types_are_errors(tmp_path):
    (tmp_path / "bad.yaml").write_text("inner: {m: 2}\n")
    with pytest.raises(cfglib.ConfigError, match="unknown config key"):
        cfglib.load(Outer, tmp_path / "bad.yaml")
    with pytest.raises(cfglib.ConfigError, match="expected int"):
        cfglib.from_dict(Outer, {"inner": {"n": "many"}})


def test_round_trip_through_dict():
    cfg = Outer(inner=Inner(names=("u", "v")))
    assert cfglib.from_dict(Outer, cfglib.to_dict(cfg)) == cfg


def test_codec_presets_load_with_env_override(monkeypatch):
    assert {"default", "seed-200hz", "seed-40hz", "mimi-like"} <= set(preset_names())
    monkeypatch.setenv("MAATA_CODEC__QUANTIZER__N_Q", "4")
    cfg = load_preset("default")
    assert cfg.quantizer.n_q == 4 and cfg.hop == 640
    assert {n: load_preset(n, env_prefix=None).bitrate for n in ("seed-200hz", "seed-40hz", "mimi-like")} == {
        "seed-200hz": 16000.0, "seed-40hz": 3200.0, "mimi-like": 1100.0}
    with pytest.raises(ValueError, match="unknown codec preset"):
        load_preset("nope")


def test_every_training_config_loads():
    """Each YAML in training/configs parses into its trainer's config (no unknown keys, right
    types, valid values): a recipe the README points at cannot rot unnoticed."""
    from pathlib import Path

    from training import codec_trainer, lm_trainer

    folder = Path(__file__).resolve().parents[1] / "training" / "configs"
    names = sorted(p.stem for p in folder.glob("*.yaml"))
    assert {"codec_v2", "lm_dialogue_cpu", "lm_voice_cpu"} <= set(names)
    for name in names:
        if name.startswith("lm_"):
            cfg = lm_trainer.load_config(name)
            assert cfg.stage in name and cfg.steps > 0, name
        else:
            assert codec_trainer.load_config(name).steps > 0, name
