"""The committed checkpoints give the recorded outputs.

``tests/data/checkpoint_outputs.safetensors`` holds fixed inputs and what the served codec and
LM (:mod:`maata.served`) made of them, run in float64 (stored in float32). A change to the model code that alters what those weights compute (a new
RoPE pairing without permuting the loaded q/k projections, a renamed layer whose weights are
silently dropped, a different mask) fails here. Record a new reference only on purpose, for a
new checkpoint: ``python tests/test_checkpoint_outputs.py --record``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from maata.served import SERVED_CODEC, SERVED_LM

ROOT = Path(__file__).resolve().parents[1]
CODEC = ROOT / SERVED_CODEC
LM_CKPT = ROOT / SERVED_LM
REFERENCE = Path(__file__).parent / "data/checkpoint_outputs.safetensors"
KEEP = 24  # logits kept per row (plus every row's logsumexp and argmax over the full vocabulary)


def _inputs() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(20240514)
    t = torch.arange(int(0.8 * 16000), dtype=torch.float64) / 16000
    noise = torch.randn(t.shape, generator=g, dtype=torch.float64)
    wav = 0.3 * torch.sin(2 * torch.pi * 180 * t) * torch.sin(2 * torch.pi * 3 * t) + 0.05 * noise
    B, K, T, card, vocab = 2, 8, 12, 1024, 2000
    return {
        "wav": wav[None, None],
        "user": torch.randint(0, card, (B, K, T), generator=g),
        "agent": torch.randint(0, card, (B, K, T), generator=g),
        "text": torch.randint(0, vocab, (B, T), generator=g),
        "reference": torch.randint(0, card, (1, K, 40), generator=g),
    }


def _fingerprint(logits: torch.Tensor) -> dict[str, torch.Tensor]:
    """A few logits, and the logsumexp and argmax of every row (they depend on all of them)."""
    return {"head": logits[..., :KEEP].contiguous(), "lse": logits.logsumexp(-1), "argmax": logits.argmax(-1)}


def _outputs(inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    from maata.checkpoint import load_codec
    from maata.lm.checkpoint import load_lm
    from maata.lm.sampling import SamplingParams

    out: dict[str, torch.Tensor] = {}
    codec = load_codec(CODEC).double()
    wav = inputs["wav"]
    with torch.no_grad():
        out["codec.latents"] = codec.latents(wav)
        codes = codec.encode(wav)
        out["codec.codes"] = codes
        out["codec.decoded"] = codec.decode(codes)
        state = codec.init_state(1)
        got = [codec.encode_step(state, wav[:, 0, i: i + 2560]) for i in range(0, wav.shape[-1], 2560)]
        out["codec.stream_codes"] = torch.cat(got, dim=2)
        out["codec.stream_decoded"] = codec.decode_step(state, out["codec.stream_codes"])

    lm = load_lm(LM_CKPT).double()
    user, agent, text = inputs["user"], inputs["agent"], inputs["text"]
    B, K, T = user.shape
    with torch.no_grad():
        speaker = lm.speaker_embedding(inputs["reference"])
        out["lm.speaker"] = speaker
        voice = ["female_1", "custom"]
        res = lm(user, agent, text, voice=voice, emotion=["HAPPY", "NEUTRAL"], speaker=speaker.expand(B, -1))
        for k, v in _fingerprint(res.audio_logits).items():
            out[f"lm.forward.audio.{k}"] = v
        for k, v in _fingerprint(res.text_logits).items():
            out[f"lm.forward.text.{k}"] = v

        state = lm.init_state(B)
        lm.reset(state, torch.ones(B, dtype=torch.bool), seed=torch.tensor([11, 12]))
        sampling = SamplingParams(temperature=0.8, top_k=50, text_temperature=0.7, text_top_k=20)
        steps = []
        for t in range(T):
            active = torch.tensor([True, t % 3 != 1])
            steps.append(lm.step(state, user[:, :, t], active, voice=voice, emotion="EXCITED",
                                 speaker=speaker.expand(B, -1), sampling=sampling, return_logits=True))
        out["lm.step.codes"] = torch.stack([s.step_codes for s in steps], dim=2)
        out["lm.step.text"] = torch.stack([s.text_token for s in steps], dim=1)
        for k, v in _fingerprint(torch.stack([s.audio_logits for s in steps], dim=2)).items():
            out[f"lm.step.audio.{k}"] = v

        state = lm.init_state(1)
        lm.prefill(state, 0, user[0, :, :8], agent[0, :, :8], text[0, :8], voice="male_2", seed=5)
        after = [lm.step(state, user[:1, :, t], torch.ones(1, dtype=torch.bool), voice="male_2", sampling=sampling,
                         return_logits=True) for t in range(8, T)]
        out["lm.prefill.codes"] = torch.stack([s.step_codes for s in after], dim=2)
        for k, v in _fingerprint(torch.stack([s.audio_logits for s in after], dim=2)).items():
            out[f"lm.prefill.audio.{k}"] = v
    return out


@pytest.fixture(scope="module")
def reference() -> dict[str, torch.Tensor]:
    return load_file(str(REFERENCE))


def test_checkpoints_give_the_recorded_outputs(reference):
    torch.set_num_threads(1)
    inputs = {k[len("input."):]: v for k, v in reference.items() if k.startswith("input.")}
    assert set(inputs) == set(_inputs())
    got = _outputs(inputs)
    expected = {k: v for k, v in reference.items() if not k.startswith("input.")}
    assert set(got) == set(expected)
    for name, want in expected.items():
        have = got[name]
        assert have.shape == want.shape, name
        if want.is_floating_point():
            # computed in float64, stored in float32: the tolerance is the storage rounding
            torch.testing.assert_close(have.float(), want, rtol=1e-6, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}")
        else:
            assert torch.equal(have, want), name


if __name__ == "__main__" and "--record" in sys.argv:
    torch.set_num_threads(1)
    ins = _inputs()
    REFERENCE.parent.mkdir(exist_ok=True)
    outs = {k: v.float() if v.is_floating_point() else v for k, v in _outputs(ins).items()}
    save_file({**{f"input.{k}": v.contiguous() for k, v in ins.items()},
               **{k: v.contiguous() for k, v in outs.items()}}, str(REFERENCE))
    print(f"wrote {REFERENCE} ({REFERENCE.stat().st_size / 1e3:.0f} kB)")
