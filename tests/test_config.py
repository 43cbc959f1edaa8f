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
