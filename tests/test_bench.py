"""bench/codec_speed.py runs end to end (tiny codec, --quick) and writes every field."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from maata.checkpoint import save_model
from maata.codec import Codec, load_preset
from tests.support.models import TINY_FRAME

REPO = Path(__file__).resolve().parents[1]


def test_codec_speed_quick(tmp_path):
    cfg = load_preset("default", env_prefix=None, latent_dim=32, quantizer={"n_q": 4, "codebook_size": 64},
                      frame=TINY_FRAME)
    ckpt = save_model(tmp_path / "tiny.safetensors", Codec(cfg), cfg, kind="codec")
    v1 = load_preset("seanet", env_prefix=None, base_channels=4, max_channels=32, latent_dim=32,
                     transformer={"layers": 1, "heads": 2}, quantizer={"n_q": 4, "codebook_size": 64})
    v1_ckpt = save_model(tmp_path / "v1.safetensors", Codec(v1), v1, kind="codec")
    out = tmp_path / "bench.json"
    r = subprocess.run([sys.executable, str(REPO / "bench" / "codec_speed.py"), "--checkpoint", str(ckpt), "--quick",
                        "--baseline", str(v1_ckpt), "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "Codec speed" in r.stdout and "Opus 6 kbps" in r.stdout and "side by side" in r.stdout

    both = json.loads(out.read_text())
    assert both["baseline"]["algorithmic_latency_ms"] == 40.0  # v1: one frame
    res = both["codec"]
    assert res["codec"]["params"] > 0 and res["algorithmic_latency_ms"] == 50.0  # v2: + overlap-add
    for section in ("offline", "streaming_1s"):
        for threads in ("threads_1", "threads_2"):
            assert res[section][threads]["rtf"] > 0 and res[section][threads]["x_realtime"] > 0
    for batch in ("batch_1", "batch_16"):
        lat = res["frame_latency"][batch]
        assert 0 < lat["p50_ms"] <= lat["p99_ms"] <= lat["max_ms"]
        assert lat["streams_per_core"] > 0
    mem = res["memory"]
    assert mem["weights_mb"] > 0
    assert mem["state_bytes_per_call"]["batch_1"] > 0 and mem["state_bytes_per_call"]["batch_16"] > 0
    assert set(mem["peak_rss_growth_mb"]) == {"offline", "streaming_batch_16"}
    opus = res["opus_6kbps"]
    assert opus["rtf"] > 0 and 4.5 < opus["kbps_measured"] < 7.0
    assert res["torch_compile"]["status"] == "skipped"
    assert res["frame_latency_compiled"]["status"] == "skipped"


def test_ab_speed_compares_two_revisions(tmp_path):
    """bench/ab_speed.py: a revision against the working tree, calls interleaved (here HEAD against
    this tree, two rounds: the machinery, not the numbers)."""
    out = tmp_path / "ab.json"
    r = subprocess.run([sys.executable, str(REPO / "bench" / "ab_speed.py"), "--base", "HEAD", "--head", str(REPO),
                        "--reps", "2", "--warmup", "0", "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    res = json.loads(out.read_text())
    assert set(res["rows"]) == {"lm_step_b1", "lm_step_b16", "codec_frame_b1", "codec_frame_b16", "codec_offline_4s",
                                "lm_forward_b4_t200"}
    for row in res["rows"].values():
        assert row["base_p50_ms"] > 0 and row["head_p50_ms"] > 0 and row["head_over_base"] > 0
