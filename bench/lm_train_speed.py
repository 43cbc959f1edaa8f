"""Training throughput of the speech LM on this machine: frames per second (wall and per CPU core).

    python bench/lm_train_speed.py --checkpoint checkpoints/lm_demo.safetensors --shards DIR

Times full training steps (teacher-forced forward of the temporal + depth transformers, losses,
backward, AdamW) of the trainer's own :class:`training.lm_trainer.TrainStep` on batches of real
dialogue shards (``DIR/train``), after warm-up steps. Reports wall-clock frames/s and frames per
CPU-second of this process (``time.process_time``: what the step costs, whatever else shares the
machine), so the README's arithmetic (steps and model size from the compute) can be reproduced on
a busy machine. Prints a table and writes JSON (``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from maata.served import SERVED_LM  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", type=Path, default=Path(SERVED_LM))
    p.add_argument("--shards", type=Path, required=True, help="dialogue shards (maata data dialogues --out)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--crop-frames", type=int, default=250)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path("out/bench/lm_train_speed.json"))
    args = p.parse_args(argv)

    from maata.lm.checkpoint import load_lm
    from training.lm_data import DialogueDataset, collate
    from training.lm_trainer import TrainStep

    torch.set_num_threads(args.threads)
    lm = load_lm(args.checkpoint, "cpu")
    lm.train()
    ds = DialogueDataset(args.shards, "train", args.crop_frames, n_q=lm.cfg.n_q, codebook_size=lm.cfg.codebook_size,
                         epad_id=lm.cfg.text.epad_id, voices=lm.voices, emotions=lm.emotions)
    step = TrainStep(lm, text_weight=1.0, train_speaker=False)
    opt = torch.optim.AdamW(lm.parameters(), lr=1e-5)
    params = sum(p.numel() for p in lm.parameters())
    g = torch.Generator().manual_seed(0)
    walls, cpus, frames = [], [], []
    for i in range(args.warmup + args.steps):
        idx = torch.randint(len(ds), (args.batch,), generator=g).tolist()
        batch = collate([ds[j] for j in idx], lm.cfg.text.epad_id)
        w0, c0 = time.perf_counter(), time.process_time()
        out = step(batch)
        opt.zero_grad(set_to_none=True)
        out["total"].backward()
        opt.step()
        w1, c1 = time.perf_counter(), time.process_time()
        if i >= args.warmup:
            walls.append(w1 - w0)
            cpus.append(c1 - c0)
            frames.append(int(batch["frame_mask"].sum()))
    n = sum(frames)
    report = {"checkpoint": str(args.checkpoint), "params_m": round(params / 1e6, 2), "batch": args.batch,
              "crop_frames": args.crop_frames, "threads": args.threads, "steps": args.steps,
              "frames_per_step": n / len(frames), "s_per_step_wall": sum(walls) / len(walls),
              "frames_per_s_wall": n / sum(walls), "frames_per_cpu_s": n / sum(cpus),
              "load_avg": os.getloadavg()[0]}
    print("| model | params | batch × crop | s/step (wall) | frames/s (wall) | frames per CPU-second | load |")
    print("|---|---|---|---|---|---|---|")
    print(f"| {args.checkpoint.name} | {report['params_m']} M | {args.batch} × {args.crop_frames} | "
          f"{report['s_per_step_wall']:.2f} | {report['frames_per_s_wall']:.0f} | {report['frames_per_cpu_s']:.0f} | "
          f"{report['load_avg']:.1f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
