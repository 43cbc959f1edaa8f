"""Writing an LM evaluation report: JSON, a markdown table and a PNG of the distributions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np


def _f(v: Any, fmt: str = "{:.3f}") -> str:
    return "–" if v is None else fmt.format(v)


def markdown_table(r: dict[str, Any]) -> str:
    tf, ra, ad = r["teacher_forced"], r["right_answer"], r["adherence"]
    g, t = r["turn_taking"]["generated"], r["turn_taking"]["reference"]
    lines = [f"# LM evaluation: {r['dialogues']} dialogues of split `{r['split']}` ({r['seconds']:.0f} s)", "",
             "| measure | model | reference / ceiling |", "|---|---:|---:|",
             f"| cross-entropy codebook 1 (nats) | {_f(tf['ce_per_codebook'][0])} | uniform {tf['uniform_ce']:.3f} |",
             f"| cross-entropy mean over codebooks | {_f(tf['ce_mean'])} | |",
             f"| accuracy codebook 1 | {_f(tf['acc_per_codebook'][0])} | |",
             f"| text cross-entropy | {_f(tf['text_ce'])} | |",
             f"| text accuracy (all / words) | {_f(tf['text_acc'])} / {_f(tf['text_acc_words'])} | |",
             f"| user's words recognised (user-transcript head) | {_f(tf.get('user_text_acc_words'))} | |",
             f"| right answer top-1 ({ra['n']} QA) | {_f(ra.get('top1'))} | {_f(ra.get('reference_top1'))} "
             f"(chance {_f(ra.get('chance'))}) |",
             *[f"| right answer top-1, {label} phrasings ({ra[key]['n']} QA) | {_f(ra[key].get('top1'))} | "
               f"{_f(ra[key].get('reference_top1'))} |"
               for key, label in (("seen_phrasings", "seen"), ("heldout_phrasings", "held-out")) if key in ra],
             f"| right answer top-3 | {_f(ra.get('top3'))} | |",
             *([] if not r.get("right_answer_text") else
               [f"| right answer, inner-monologue text top-1 ({r['right_answer_text']['n']} QA) | "
                f"{_f(r['right_answer_text'].get('top1'))} | {_f(r['right_answer_text'].get('reference_top1'))} |",
                *[f"| right answer text, {label} phrasings | {_f(r['right_answer_text'][key].get('top1'))} | "
                  f"{_f(r['right_answer_text'][key].get('reference_top1'))} |"
                  for key, label in (("seen_phrasings", "seen"), ("heldout_phrasings", "held-out"))
                  if key in r["right_answer_text"] and r["right_answer_text"][key].get("n")],
                f"| answer text exactly right / similarity to it | {_f(r['right_answer_text'].get('exact'))} / "
                f"{_f(r['right_answer_text'].get('similarity'))} | |"]),
             f"| silent replies | {_f(ra.get('silent_replies'))} | |",
             f"| start delay median (ms) | {_f(g['start_delay_ms']['median'], '{:.0f}')} | "
             f"{_f(t['start_delay_ms']['median'], '{:.0f}')} |",
             f"| start delay p90 (ms) | {_f(g['start_delay_ms']['p90'], '{:.0f}')} | "
             f"{_f(t['start_delay_ms']['p90'], '{:.0f}')} |",
             f"| unanswered turns | {_f(g['unanswered_rate'])} | {_f(t['unanswered_rate'])} |",
             f"| overlap (agent speech over user) | {_f(g['overlap_rate'])} | {_f(t['overlap_rate'])} |",
             f"| user speech talked over | {_f(g['talk_over_user_rate'])} | {_f(t['talk_over_user_rate'])} |",
             f"| time to stop when interrupted, median (ms) | {_f(g['stop_ms']['median'], '{:.0f}')} | "
             f"{_f(t['stop_ms']['median'], '{:.0f}')} |",
             f"| stopped when interrupted | {_f(g['stopped_rate'])} ({g['interruptions']}) | "
             f"{_f(t['stopped_rate'])} ({t['interruptions']}) |"]
    for key in ("voice", "emotion"):
        e = ad[key]
        lines.append(f"| {key} adherence ({e.get('n', 0)} replies) | {_f(e.get('accuracy'))} | "
                     f"{_f(e.get('classifier_accuracy'))} (chance {_f(e.get('chance'))}) |")
    lines += ["", f"Cross-entropy per codebook: {', '.join(f'{v:.3f}' for v in tf['ce_per_codebook'])}.",
              f"Sampling: temperature {r['sampling']['temperature']:g}, top-k {r['sampling']['top_k']}; "
              f"speech detector: {r['detector']['mode']} "
              f"({r['detector'].get('effective_dbfs', r['detector']['threshold_dbfs']):.1f} dBFS). Delays are in "
              f"the data's time frame; a served call adds {r['detector']['served_latency_add_ms']:.0f} ms "
              "(acoustic delay + codec frame)."]
    lines += [f"Note: {n}" for n in r.get("notes", [])]
    return "\n".join(lines) + "\n"


def plot(r: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 3.8))
    ax = axes[0]
    g = r["_delays"]["generated"]
    t = r["_delays"]["reference"]
    bins = np.linspace(0, max([1.0] + g + t), 20)
    if g:
        ax.hist(g, bins=bins, alpha=0.7, label="model")
    if t:
        ax.hist(t, bins=bins, alpha=0.5, label="reference")
    ax.set_title("agent start delay after the user stops")
    ax.set_xlabel("ms")
    ax.legend()
    ax = axes[1]
    ce = r["teacher_forced"]["ce_per_codebook"]
    ax.bar(range(1, len(ce) + 1), ce)
    ax.axhline(r["teacher_forced"]["uniform_ce"], color="grey", ls="--", label="uniform")
    ax.set_title("teacher-forced cross-entropy")
    ax.set_xlabel("codebook")
    ax.set_ylabel("nats")
    ax.legend()
    ax = axes[2]
    s = r["_stops"]
    if s["generated"] or s["reference"]:
        ax.boxplot([s["generated"] or [np.nan], s["reference"] or [np.nan]], tick_labels=["model", "reference"])
    ax.set_title("time to stop when interrupted (ms)")
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)


def write_outputs(report: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "lm_eval.json", "markdown": out / "lm_eval.md", "png": out / "lm_eval.png"}
    report["outputs"] = {k: str(v) for k, v in paths.items()}
    plot(report, paths["png"])
    public = {k: v for k, v in report.items() if not k.startswith("_")}
    paths["json"].write_text(json.dumps(public, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    paths["markdown"].write_text(markdown_table(report), encoding="utf-8")
