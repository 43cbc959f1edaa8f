"""The learning curve of a staged LM run: ``maata train curve``.

Evaluates the checkpoints of one or more training runs (the stages in order: pretrain, dialogue,
voice) with :func:`maata.lm.evaluate.evaluate` on the same held-out dialogues, and plots what the
issue asks to watch against the cumulative training step: the right answer by the spoken reply
(DTW against every intent's references) and by the inner-monologue text, each for seen and
held-out phrasings, next to text accuracy and codebook-1 cross-entropy. Writes ``curve.json``
(one row per checkpoint, every number of its evaluation) and ``curve.png``.

Replies are sampled as a served call samples them (``maata.lm.SamplingParams()``: audio 0.8,
text 0.7) unless told otherwise: a model early in training rarely wins the argmax against
"stay silent" (EPAD) at any one frame, so greedy decoding would hide what it has learnt.

Results are cached in ``curve.json`` by (run, step, evaluation settings): run it again as
training goes on and only the new checkpoints are evaluated.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from maata.lm.checkpoint import load_lm, lm_config_from_dict
from maata.lm.model import LM
from training import checkpointing
from training.lm_trainer import EXPORT_NAME, LM_CONFIG_NAME

log = logging.getLogger(__name__)

ROW_VERSION = 2  # what a row holds; cached rows of another version are evaluated again


@dataclass(frozen=True)
class CurvePoint:
    """One model to evaluate: a checkpoint (or the final export) of a run."""

    run: str
    stage_step: int  # the step within its run
    step: int  # cumulative over the runs before it
    path: str  # the step folder, or the export file


def curve_points(runs: list[str | Path], every: int = 1, start_step: int = 0) -> list[CurvePoint]:
    """Every ``every``-th checkpoint of each run, plus each run's final export when it is newer
    than its last checkpoint; steps accumulate over the runs in the given order, the first run
    starting at ``start_step`` (the training its ``--init-from`` export had already had)."""
    points: list[CurvePoint] = []
    offset = start_step
    for run in map(Path, runs):
        if not run.is_dir():
            raise FileNotFoundError(f"run folder not found: {run}")
        ckpts = checkpointing.list_checkpoints(run)
        chosen = [c for i, c in enumerate(ckpts) if i % every == every - 1 or i == len(ckpts) - 1]
        mine = [CurvePoint(str(run), s, offset + s, str(p)) for s, p in chosen]
        export = run / EXPORT_NAME
        last = ckpts[-1][0] if ckpts else 0
        if export.is_file():
            from maata.checkpoint import read_metadata

            step = int(read_metadata(export).get("step", last) or last)
            if step > last or not ckpts:
                mine.append(CurvePoint(str(run), step, offset + step, str(export)))
            last = max(last, step)
        if not mine:
            raise FileNotFoundError(f"{run} has neither checkpoints nor {EXPORT_NAME}")
        points += mine
        offset += last
    return points


def load_point(point: CurvePoint) -> LM:
    """The model of a curve point, in eval mode."""
    path = Path(point.path)
    if path.is_file():
        return load_lm(path)
    cfg = lm_config_from_dict(json.loads((Path(point.run) / LM_CONFIG_NAME).read_text(encoding="utf-8")))
    lm = LM(cfg)
    checkpointing.load_weights(path, {"lm": lm})  # the trainer saves its model as module "lm"
    return lm.eval()


def _key(point: CurvePoint, settings: dict[str, Any]) -> str:
    return json.dumps([str(Path(point.run).resolve()), point.stage_step, Path(point.path).name, settings],
                      sort_keys=True)


def _summary(point: CurvePoint, report: dict[str, Any]) -> dict[str, Any]:
    ra, rt, tf = report["right_answer"], report.get("right_answer_text") or {}, report["teacher_forced"]
    gen = report["turn_taking"]["generated"]
    row = {**asdict(point), "stage": Path(point.run).name,
           "right_answer": ra.get("top1"), "right_answer_text": rt.get("top1"),
           "answer_text_exact": rt.get("exact"), "chance": ra.get("chance"),
           "text_acc_words": tf.get("text_acc_words"), "user_text_acc_words": tf.get("user_text_acc_words"),
           "ce_codebook1": tf["ce_per_codebook"][0],
           "start_delay_ms": gen["start_delay_ms"].get("median"), "silent_replies": ra.get("silent_replies"),
           "voice_adherence": report["adherence"]["voice"].get("accuracy"),
           "emotion_adherence": report["adherence"]["emotion"].get("accuracy")}
    for part in ("seen", "heldout"):
        row[f"right_answer_{part}"] = (ra.get(f"{part}_phrasings") or {}).get("top1")
        row[f"right_answer_text_{part}"] = (rt.get(f"{part}_phrasings") or {}).get("top1")
    return row


def learning_curve(runs: list[str | Path], codec, shards: str | Path, eval_cfg, out: str | Path,
                   every: int = 1, progress: bool = True, start_step: int = 0) -> list[dict[str, Any]]:
    """Evaluate every curve point not already in ``out/curve.json``; write the JSON and PNG and
    return the rows (ordered by cumulative step).

    With ``start_step`` > 0 the runs continue a curve made earlier: the rows of ``curve.json`` up
    to that step, evaluated with the same settings, stay in the curve as its history even when
    their run folders are gone (trainer state does not outlive a machine; the rows do)."""
    from maata.lm.evaluate import evaluate

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cache_path = out / "curve.json"
    cache: dict[str, Any] = {}
    if cache_path.is_file():
        cache = {r["key"]: r for r in json.loads(cache_path.read_text(encoding="utf-8")).get("rows", [])}
    settings = {"shards": str(Path(shards).resolve()), "split": eval_cfg.split, "limit": eval_cfg.max_dialogues,
                "seed": eval_cfg.seed, "sampling": asdict(eval_cfg.sampling)}
    points = curve_points(runs, every, start_step)
    rows = [r for r in cache.values() if start_step > 0 and r.get("version") == ROW_VERSION
            and r["step"] <= start_step and json.loads(r["key"])[-1] == settings]
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(points), desc="checkpoints", unit="ckpt")
    for point in points:
        key = _key(point, settings)
        if cache.get(key, {}).get("version") != ROW_VERSION:
            log.info("evaluating %s step %d (cumulative %d)", point.run, point.stage_step, point.step)
            report = evaluate(load_point(point), codec, shards, eval_cfg)
            cache[key] = {"key": key, "version": ROW_VERSION, **_summary(point, report)}
            rows_now = sorted(cache.values(), key=lambda r: r["step"])
            _write(cache_path, rows_now, settings)  # checkpoint the sweep itself
        rows.append({**cache[key], "step": point.step})  # cumulative: where this curve puts the run
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    rows.sort(key=lambda r: r["step"])
    _write(cache_path, rows, settings)
    plot_curve(rows, out / "curve.png")
    return rows


def _write(path: Path, rows: list[dict[str, Any]], settings: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"settings": settings, "rows": rows}, indent=1), encoding="utf-8")
    tmp.replace(path)


def plot_curve(rows: list[dict[str, Any]], path: str | Path) -> Path:
    """Right answer (spoken and text; seen and held-out phrasings) and text accuracy / codebook-1
    cross-entropy against the cumulative step, stage boundaries marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.2))
    series = (("right_answer", "spoken reply (DTW)", "C0", "-"),
              ("right_answer_heldout", "spoken, held-out phrasings", "C0", ":"),
              ("right_answer_text", "inner-monologue text", "C1", "-"),
              ("right_answer_text_heldout", "text, held-out phrasings", "C1", ":"))
    for key, label, color, style in series:
        pts = [(s, r[key]) for s, r in zip(steps, rows) if r.get(key) is not None]
        if pts:
            ax1.plot(*zip(*pts), style, color=color, marker="o", ms=3, label=label)
    chance = next((r["chance"] for r in rows if r.get("chance")), None)
    if chance:
        ax1.axhline(chance, color="grey", lw=0.8, ls="--", label="chance")
    ax1.set(xlabel="training step (cumulative over stages)", ylabel="right answer, top-1", ylim=(0, 1),
            title="right answer on held-out speakers")
    ax1.legend(fontsize=8)
    for key, label, color in (("text_acc_words", "agent text: words right (teacher-forced)", "C2"),
                              ("user_text_acc_words", "user's words recognised (transcript head)", "C4")):
        pts = [(s, r[key]) for s, r in zip(steps, rows) if r.get(key) is not None]
        if pts:
            ax2.plot(*zip(*pts), color=color, marker="o", ms=3, label=label)
    ax2.set(xlabel="training step (cumulative over stages)", ylabel="accuracy", ylim=(0, 1))
    twin = ax2.twinx()
    twin.plot(steps, [r["ce_codebook1"] for r in rows], color="C3", marker="o", ms=3, label="CE codebook 1")
    twin.set_ylabel("cross-entropy (nats)")
    lines = ax2.get_legend_handles_labels()
    more = twin.get_legend_handles_labels()
    ax2.legend(lines[0] + more[0], lines[1] + more[1], fontsize=8, loc="upper right")
    ax2.set_title("teacher-forced text and audio")
    for ax in (ax1, ax2):
        for a, b in zip(rows, rows[1:]):
            if a["run"] != b["run"]:
                ax.axvline(a["step"], color="k", lw=0.6, alpha=0.4)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


__all__ = ["CurvePoint", "curve_points", "learning_curve", "load_point", "plot_curve"]
