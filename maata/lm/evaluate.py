"""Evaluation of the speech LM on held-out dialogues (held-out user speakers): ``maata lm eval``.

``evaluate(lm, codec, shards)`` reads the dialogue records of one split (default ``test``, the
split whose *user speakers* training never heard) and reports:

* **teacher-forced cross-entropy** per codebook (nats; with the model's codebook weighting too),
  argmax accuracy per codebook, and the text stream's cross-entropy and token accuracy (all
  frames, and frames with a word — not EPAD);
* **hearing**: the user-transcript head's accuracy on the user's words (``user_text``, each
  word at the frame where it has been heard), when the model has the head — how much of the
  question the model recognises, the first thing understanding needs;
* **right answer** (QA dialogues): the user channel is streamed through ``lm.step`` (greedy by
  default, or the given sampling) and on with user silence up to ``max_reply_s`` after the
  question (so the record's length, set by the true answer, gives nothing away); the generated
  agent codes in that window are trimmed to their speech and compared by DTW over codec
  latents (``codec.quantizer.decode(codes)``: one latent per frame, cosine distance,
  path-length normalised) with the reference renderings of *every* intent's answer (the
  ``reference`` split the dialogue builder writes — every answer in every voice — or, given a
  split of dialogues, their QA answers; the same agent voice preferred; never the dialogue's
  own); top-1/top-3 accuracy against the dialogue's intent, with chance and the same matching
  applied to the true agent reply as a ceiling. Dialogues whose first answer is interrupted
  are left out (counted); a reply ends where the user speaks again;
* **right answer, text** (understanding apart from speaking): the inner-monologue text written
  in the same window is compared with every intent's answer text (token sequences, difflib
  ratio); top-1 against the dialogue's intent, the share of exact answers, and the record's
  own text stream as the ceiling. When the text is right and the audio is not, the model
  understood the question and the audio rendering is what to train;
* conditioning as in a live call: the record's voice, and its emotion *held* from before each
  agent turn (:func:`held_emotion`) so the emotion's onset does not tell the model when to speak;
* **turn-taking** on the generated agent channel, next to the same measures on the true one:
  start delay after a user turn ends (ms, in the data's time frame — a served call adds the
  acoustic delay and the codec's frame), the share of user turns left unanswered, overlap
  (share of the agent's speech that talks over the user, and share of the user's speech talked
  over), and the time to stop when interrupted (the agent was speaking when an interruption
  began; stopped = ``stop_frames`` consecutive silent frames). The agent *speaks* in a frame
  when its decoded audio is louder than ``threshold_dbfs`` and 6 dB above the codec's decoded
  silence (``detector="energy"``), or when its first code differs from the codec's silence code
  (``detector="codes"``);
* **voice and emotion adherence**: a multinomial logistic regression (standardised mean and
  standard deviation over frames of the codec latents → class; L-BFGS, L2 1e-3) is trained on
  the reference renderings (labelled with their voice and emotion) and applied to the generated replies; accuracy
  against the voice and emotion the model was asked for. The classifier's own accuracy on the
  true agent turns of the evaluated split is reported as its ceiling.

Outputs: ``lm_eval.json`` (every number), ``lm_eval.md`` (a table) and ``lm_eval.png``
(start-delay histogram, cross-entropy per codebook, stop times).
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from difflib import SequenceMatcher
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from maata.data.shards import ShardReader, find_shards, record_split
from maata.lm.compat import check_compatible
from maata.lm.dialogues import Dialogue, emotion_table, held_emotion, load_dialogues
from maata.lm.metrics import (ChannelSpeech, LinearProbe, TurnStats, device_of, dtw_distances, latents, pooled,
                              speech_span)
from maata.lm.model import ABSENT_CODE, LM
from maata.lm.report import write_outputs
from maata.lm.sampling import GREEDY, SamplingParams
from maata.text.tokenizer import EPAD_ID, SPECIALS

log = logging.getLogger(__name__)


# -- configuration ----------------------------------------------------------------------------------
@dataclass
class EvalConfig:
    split: str = "test"  # held-out dialogues (held-out user speakers)
    reference_split: str = "reference"  # renderings of every intent's answer in every voice (the dialogue
    # builder's reference/ shards: field ``codes``), or dialogue records whose agent turns serve as renderings
    max_dialogues: int | None = None  # evaluate at most this many dialogues of the split
    max_references: int = 3  # reference renderings kept per (intent, voice)
    max_classifier_references: int = 400  # reference turns the voice/emotion classifier trains on
    sampling: SamplingParams = field(default_factory=lambda: GREEDY)
    seed: int = 0
    batch: int = 16  # dialogues streamed at once (slots of one state)
    tf_batch: int = 8  # dialogues per teacher-forced forward
    detector: str = "energy"  # energy | codes
    threshold_dbfs: float = -40.0
    stop_frames: int = 3  # consecutive silent frames that count as "stopped"
    max_stop_s: float = 5.0  # an agent still talking this long after an interruption did not stop
    max_reply_s: float = 10.0  # QA replies are looked for in this window after the question, streamed past
    # the record's end with user silence when needed (the record's length would give the true reply's away)


# -- teacher forcing ------------------------------------------------------------------------------------
def _voice_id(lm: LM, name: str | None) -> int:
    return lm.voices.index(name) if name in lm.voices else 0


def _lm_emotions(lm: LM, d: Dialogue, T: int | None = None) -> np.ndarray:
    """The dialogue's held per-frame emotion as LM ids (NEUTRAL without a field), length T (edge-padded)."""
    T = d.frames if T is None else T
    if d.emotion is None:
        return np.zeros(T, np.int64)
    ids = emotion_table(lm.emotions)[held_emotion(d.emotion, d.agent_turns())]
    if ids.size < T:
        ids = np.concatenate([ids, np.full(T - ids.size, ids[-1] if ids.size else 0)])
    return ids[:T]


@torch.no_grad()
def teacher_forced(lm: LM, dialogues: Sequence[Dialogue], batch: int = 8) -> dict[str, Any]:
    """Cross-entropy and accuracy per codebook, text cross-entropy and accuracy, over all frames."""
    K, dev = lm.n_q, lm.code_offsets.device
    ce = torch.zeros(K, dtype=torch.float64)
    hit = torch.zeros(K, dtype=torch.float64)
    n = torch.zeros(K, dtype=torch.float64)
    t_ce = t_n = t_hit = w_hit = w_n = 0.0
    u_hit = u_n = 0.0  # the user-transcript head on the user's words: does the model hear them?
    epad = lm.cfg.text.epad_id
    for i in range(0, len(dialogues), batch):
        group = dialogues[i:i + batch]
        B, T = len(group), max(d.frames for d in group)
        user = torch.full((B, K, T), ABSENT_CODE, dtype=torch.long)
        agent = torch.zeros(B, K, T, dtype=torch.long)
        text = torch.full((B, T), epad, dtype=torch.long)
        has_text = torch.zeros(B, T, dtype=torch.bool)
        emotion = torch.zeros(B, T, dtype=torch.long)
        mask = torch.zeros(B, T, dtype=torch.bool)
        user_text = torch.full((B, T), epad, dtype=torch.long)
        voice = torch.tensor([_voice_id(lm, d.voice) for d in group])
        for b, d in enumerate(group):
            t = d.frames
            user[b, :, :t] = torch.from_numpy(d.user)
            agent[b, :, :t] = torch.from_numpy(d.agent).clamp(min=0)
            mask[b, :t] = torch.from_numpy((d.agent >= 0).all(0))
            if d.text is not None:
                text[b, :t] = torch.from_numpy(d.text)
                has_text[b, :t] = True
            if d.user_text is not None:
                user_text[b, :t] = torch.from_numpy(d.user_text)
            emotion[b, :t] = torch.from_numpy(_lm_emotions(lm, d))
        out = lm(user.to(dev), agent.to(dev), text.to(dev) if lm.text_enabled else None, voice.to(dev),
                 emotion.to(dev))
        logits = out.audio_logits.float().cpu()  # [B, K, T, V]
        m = out.audio_mask.cpu() & mask[:, None]
        c = F.cross_entropy(logits.permute(0, 3, 1, 2), agent, reduction="none")  # [B, K, T]
        ce += (c * m).sum((0, 2)).double()
        hit += ((logits.argmax(-1) == agent) & m).sum((0, 2)).double()
        n += m.sum((0, 2)).double()
        if out.text_logits is not None:
            tm = has_text & mask
            tl = out.text_logits.float().cpu()
            tc = F.cross_entropy(tl.reshape(B * T, -1), text.reshape(-1), reduction="none").view(B, T)
            pred = tl.argmax(-1)
            t_ce += float((tc * tm).sum())
            t_n += float(tm.sum())
            t_hit += float(((pred == text) & tm).sum())
            words = tm & (text != epad)
            w_hit += float(((pred == text) & words).sum())
            w_n += float(words.sum())
        if out.user_text_logits is not None:
            heard = mask & (user_text != epad)
            u_hit += float(((out.user_text_logits.float().cpu().argmax(-1) == user_text) & heard).sum())
            u_n += float(heard.sum())
    per_cb = (ce / n.clamp(min=1)).tolist()
    lw = lm.cfg.loss
    w = np.full(K, lw.other_codebook_weight)
    w[0] = lw.first_codebook_weight
    return {
        "ce_per_codebook": per_cb,
        "ce_mean": float(np.mean(per_cb)),
        "ce_weighted": float(np.dot(w, per_cb) / w.sum()),
        "perplexity_codebook1": float(math.exp(min(per_cb[0], 50.0))),
        "acc_per_codebook": (hit / n.clamp(min=1)).tolist(),
        "text_ce": t_ce / t_n if t_n else None,
        "text_acc": t_hit / t_n if t_n else None,
        "text_acc_words": w_hit / w_n if w_n else None,
        "user_text_acc_words": u_hit / u_n if u_n else None,
        "frames": int(n[0]),
        "uniform_ce": math.log(lm.card),
    }


# -- streaming generation --------------------------------------------------------------------------------
@torch.no_grad()
def generate(lm: LM, dialogues: Sequence[Dialogue], sampling: SamplingParams = GREEDY, seed: int = 0,
             batch: int = 16, progress: bool = False, frames: Sequence[int] | None = None,
             user_silence: np.ndarray | None = None, texts: list[np.ndarray] | None = None) -> list[np.ndarray]:
    """Stream each dialogue's user channel through ``lm.step`` (several dialogues as the slots of
    one state); returns the generated agent codes [K, frames] per dialogue (frame layout), and
    appends each dialogue's inner-monologue tokens [frames] (-1 without a text stream) to ``texts``.

    ``frames`` (default: each dialogue's length) may run past the record: the user channel then
    continues with ``user_silence`` codes [K] (default: absent). The model is conditioned on the
    dialogue's voice and held emotion (:func:`held_emotion`). Each slot runs ``acoustic_delay``
    extra steps so its last frames are complete.
    """
    K, D = lm.n_q, lm.max_delay
    dev = lm.code_offsets.device
    frames = [d.frames for d in dialogues] if frames is None else list(frames)
    out: list[np.ndarray] = []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=sum(frames), desc="streaming", unit="frame")
    for i in range(0, len(dialogues), batch):
        group, n = dialogues[i:i + batch], frames[i:i + batch]
        nb, T = len(group), max(n)
        lengths = torch.tensor(n, device=dev)
        state = lm.init_state(nb)
        lm.reset(state, torch.ones(nb, dtype=torch.bool, device=dev),
                 seed=torch.arange(seed + i, seed + i + nb, device=dev))
        user = torch.full((nb, K, T + D), ABSENT_CODE, dtype=torch.long)
        if user_silence is not None:
            user[:] = torch.as_tensor(np.asarray(user_silence), dtype=torch.long)[None, :, None]
        emotion = torch.zeros(nb, T + D, dtype=torch.long)
        for b, d in enumerate(group):
            m = min(d.frames, T + D)
            user[b, :, :m] = torch.from_numpy(d.user[:, :m])
            emotion[b] = torch.from_numpy(_lm_emotions(lm, d, T + D))
        user, emotion = user.to(dev), emotion.to(dev)
        voice = torch.tensor([_voice_id(lm, d.voice) for d in group], device=dev)
        codes = torch.zeros(nb, K, T, dtype=torch.long, device=dev)
        text = torch.full((nb, T + D), -1, dtype=torch.long, device=dev)
        for t in range(T + D):
            active = t < lengths + D
            o = lm.step(state, user[:, :, t], active, voice=voice, emotion=emotion[:, t], sampling=sampling)
            text[:, t] = o.text_token  # the text token of the frame begun at step t
            rows = (o.ready & (o.frame < lengths)).nonzero()[:, 0]
            if rows.numel():
                codes[rows, :, o.frame[rows]] = o.agent_codes[rows]
            if bar is not None:
                bar.update(int((t < lengths).sum()))
        out.extend(codes[b, :, :n[b]].cpu().numpy() for b in range(nb))
        if texts is not None:
            texts.extend(text[b, :n[b]].cpu().numpy() for b in range(nb))
    if bar is not None:
        bar.close()
    return out


# -- the evaluation ------------------------------------------------------------------------------------
def _question_end(d: Dialogue) -> int:
    """Where the user's question ends: the end of the last user turn before the first agent turn."""
    users = d.user_turns()
    if not users:
        return 0
    agents = d.agent_turns()
    before = [u for u in users if not agents or u[0] < agents[0][0]]
    return (before or users)[-1][1]


def _reply_window(d: Dialogue, length: int, window: int | None = None) -> tuple[int, int]:
    """Where the agent's reply to the user's question is looked for: the ``window`` frames after
    the question ends (default: to ``length``), and before the user speaks again."""
    start = _question_end(d)
    end = length if window is None else start + window
    later = [a for a, _ in d.user_turns() if a >= start]
    if later:
        end = min(end, later[0])
    return start, end


def _reply(d: Dialogue, speaking: np.ndarray, window: int | None = None) -> tuple[int, int] | None:
    """The agent's reply to the user's question: its speech in :func:`_reply_window`."""
    return speech_span(speaking, *_reply_window(d, len(speaking), window))


def _true_turns(d: Dialogue, speaking: np.ndarray) -> list[tuple[int, int]]:
    """The reference agent's turns: from the metadata, else the detected reply."""
    turns = d.agent_turns()
    if turns:
        return turns
    r = _reply(d, speaking)
    return [r] if r else []


def evaluate(lm: LM, codec, shards: str | Path, cfg: EvalConfig | None = None, out_dir: str | Path | None = None,
             progress: bool = False) -> dict[str, Any]:
    """Run every measure of the module docstring; write JSON/markdown/PNG to ``out_dir`` if given."""
    cfg = cfg or EvalConfig()
    check_compatible(lm, codec)
    lm.eval()
    codec.eval()
    frame_ms = 1000.0 / lm.cfg.frame_rate
    dialogues = load_dialogues(shards, cfg.split, cfg.max_dialogues)
    if not dialogues:
        raise ValueError(f"no dialogue records (fields user, agent) in split {cfg.split!r} of {shards}")
    check_codes(lm, dialogues, cfg.split)
    notes: list[str] = []
    eval_ids = {d.id for d in dialogues}
    detector = ChannelSpeech(codec, cfg.detector, cfg.threshold_dbfs)
    try:
        renderings = load_renderings(shards, cfg.reference_split, detector, _reference_picker(cfg, eval_ids))
    except FileNotFoundError:
        renderings = []
    if not renderings:
        notes.append(f"no renderings in reference split {cfg.reference_split!r}: the agent turns of the evaluated "
                     f"split serve as references (never a dialogue's own)")
        pick = _reference_picker(cfg, set())
        renderings = [r for d in dialogues if pick(d.meta) for r in dialogue_renderings(d, detector)]
    check_renderings(lm, renderings)

    log.info("teacher forcing over %d dialogues", len(dialogues))
    tf = teacher_forced(lm, dialogues, cfg.tf_batch)
    log.info("streaming %d dialogues through lm.step", len(dialogues))
    reply_frames = int(round(cfg.max_reply_s * lm.cfg.frame_rate))
    lengths = [max(d.frames, _question_end(d) + reply_frames) for d in dialogues]
    user_silence = codec.encode(torch.zeros(1, 1, 20 * codec.hop, device=device_of(codec)))[0, :, -1].cpu().numpy()
    gen_texts: list[np.ndarray] = []
    extended = generate(lm, dialogues, cfg.sampling, cfg.seed, cfg.batch, progress, lengths, user_silence, gen_texts)
    extended_speaking = [detector(g) for g in extended]
    generated = [g[:, :d.frames] for g, d in zip(extended, dialogues)]
    gen_speaking = [s[:d.frames] for s, d in zip(extended_speaking, dialogues)]
    true_speaking = [detector(d.agent.clip(min=0)) for d in dialogues]

    # turn-taking, generated vs true agent channel
    max_stop = int(round(cfg.max_stop_s * lm.cfg.frame_rate))
    gen_tt, true_tt = TurnStats(), TurnStats()
    for d, gs, ts in zip(dialogues, gen_speaking, true_speaking):
        gen_tt.add(d, gs, frame_ms, cfg.stop_frames, max_stop)
        true_tt.add(d, ts, frame_ms, cfg.stop_frames, max_stop)
    turn = {"generated": gen_tt.summary(), "reference": true_tt.summary()}
    total = sum(d.frames for d in dialogues)
    turn["generated"]["agent_speech_share"] = sum(int(s.sum()) for s in gen_speaking) / max(total, 1)
    turn["reference"]["agent_speech_share"] = sum(int(s.sum()) for s in true_speaking) / max(total, 1)

    # reference renderings: per intent (right answer) and per voice/emotion (the classifiers)
    by_intent: dict[str, list[tuple[str | None, str, torch.Tensor]]] = {}
    per_key: Counter = Counter()
    probe_rows: list[tuple[np.ndarray, str | None, str | None]] = []
    for r in renderings:
        if r.codes.shape[-1] < 2:
            continue
        z = latents(codec, r.codes)
        if r.intent is not None and per_key[(r.intent, r.voice)] < cfg.max_references:
            by_intent.setdefault(r.intent, []).append((r.voice, r.id, z))
            per_key[(r.intent, r.voice)] += 1
        if len(probe_rows) < cfg.max_classifier_references:
            probe_rows.append((pooled(z), r.voice, r.emotion))

    right = right_answer(dialogues, extended, extended_speaking, true_speaking, by_intent, codec, reply_frames)
    right_text = (right_answer_text(dialogues, gen_texts, answer_texts(renderings, dialogues),
                                    reply_frames, lm.cfg.text.epad_id) if lm.text_enabled else None)
    adherence = voice_emotion_adherence(dialogues, extended, extended_speaking, true_speaking, probe_rows, codec)
    notes.extend(adherence.pop("notes"))

    report: dict[str, Any] = {
        "split": cfg.split, "reference_split": cfg.reference_split, "shards": str(shards),
        "dialogues": len(dialogues), "qa_dialogues": sum(d.intent is not None for d in dialogues),
        "frames": total, "seconds": total / lm.cfg.frame_rate, "renderings": len(renderings),
        "lm": {"name": lm.cfg.name, "params": sum(p.numel() for p in lm.parameters()), "n_q": lm.n_q,
               "codebook_size": lm.card, "acoustic_delay": lm.cfg.acoustic_delay, "text": lm.text_enabled},
        "sampling": {"temperature": cfg.sampling.temperature, "top_k": cfg.sampling.top_k,
                     "text_temperature": cfg.sampling.text_temperature, "text_top_k": cfg.sampling.text_top_k,
                     "seed": cfg.seed},
        "detector": {"mode": cfg.detector, "threshold_dbfs": cfg.threshold_dbfs,
                     "codec_silence_dbfs": detector.floor_dbfs, "effective_dbfs": detector.effective_dbfs,
                     "stop_frames": cfg.stop_frames,
                     "frame_ms": frame_ms,
                     "served_latency_add_ms": (lm.cfg.acoustic_delay + 1) * frame_ms},
        "teacher_forced": tf,
        "right_answer": right,
        "right_answer_text": right_text,
        "turn_taking": turn,
        "adherence": adherence,
        "notes": notes,
        "_delays": {"generated": gen_tt.delays_ms, "reference": true_tt.delays_ms},
        "_stops": {"generated": gen_tt.stops_ms, "reference": true_tt.stops_ms},
    }
    if out_dir is not None:
        write_outputs(report, Path(out_dir))
    return report


@dataclass
class Rendering:
    """One spoken agent answer: a reference for right-answer matching and the voice/emotion classifiers."""

    id: str  # the record it comes from
    intent: str | None  # the intent whose answer it is (None: not a QA answer)
    voice: str | None
    emotion: str | None
    codes: np.ndarray  # int64 [K, F], speech only
    words: tuple[int, ...] = ()  # its inner-monologue text's word tokens (no EPAD, no specials), when recorded


def dialogue_renderings(d: Dialogue, detector: ChannelSpeech) -> list[Rendering]:
    """A dialogue's agent turns as renderings; the first answers the QA intent (unless cut off)."""
    turns = d.agent_turns() or _true_turns(d, detector(d.agent.clip(min=0)))
    answered = d.intent if not d.interruptions() else None
    return [Rendering(d.id, answered if k == 0 else None, d.voice, d.emotion_name(a, b), d.agent[:, a:b].clip(min=0),
                      _words(d.text[a:b]) if d.text is not None else ())
            for k, (a, b) in enumerate(turns) if b > a]


def load_renderings(root: str | Path, split: str, detector: ChannelSpeech,
                    select: Callable[[dict[str, Any]], bool] | None = None) -> list[Rendering]:
    """Renderings of ``split``: single-stream records (field ``codes``; meta intent, voice, emotion —
    the dialogue builder's ``reference`` shards) trimmed to their speech, or dialogue records'
    agent turns."""
    paths, filter_split = find_shards(root, split)
    out: list[Rendering] = []
    for p in paths:
        reader = ShardReader(p)
        fields = set(reader.fields)
        dialogue, single = {"user", "agent"} <= fields, "codes" in fields
        if not (dialogue or single):
            continue
        for i in range(len(reader)):
            meta = reader.meta(i)
            if filter_split and record_split(meta) != split:
                continue
            if select is not None and not select(meta):
                continue
            a = reader[i].arrays
            if dialogue:
                d = Dialogue(a["user"].astype(np.int64), a["agent"].astype(np.int64),
                             a["text"].astype(np.int64) if "text" in a else None,
                             a["emotion"].astype(np.int64) if "emotion" in a else None, dict(meta))
                out.extend(dialogue_renderings(d, detector))
                continue
            codes = a["codes"].astype(np.int64)
            span = speech_span(detector(codes.clip(min=0)), 0, codes.shape[-1]) or (0, codes.shape[-1])
            emotion = meta.get("emotion")
            out.append(Rendering(str(meta.get("id", f"{p.name}:{i}")),
                                 str(meta["intent"]) if meta.get("intent") is not None else None,
                                 meta.get("voice"), emotion if isinstance(emotion, str) else None,
                                 codes[:, span[0]:span[1]].clip(min=0),
                                 _words(a["text"]) if "text" in a else ()))
    return out


def check_renderings(lm: LM, renderings: Sequence[Rendering]) -> None:
    for r in renderings:
        c = r.codes
        if c.ndim != 2 or c.shape[0] != lm.n_q or (c.size and int(c.max()) >= lm.card):
            raise ValueError(f"reference rendering {r.id!r}: codes shaped {list(c.shape)} with values up to "
                             f"{int(c.max()) if c.size else 0} do not fit the LM ([{lm.n_q}, T], codebook size "
                             f"{lm.card})")


def _reference_picker(cfg: EvalConfig, exclude: set[str]) -> Callable[[dict[str, Any]], bool]:
    """Keeps the reference records the evaluation uses (arrays of the rest are never read): the first
    ``max_references`` QA records per (intent, voice), and records for the classifier up to its cap."""
    per_key: Counter = Counter()
    state = {"probe": 0}

    def pick(meta: dict[str, Any]) -> bool:
        if str(meta.get("id", "?")) in exclude:
            return False
        keep = False
        intent = meta.get("intent")
        if intent is not None and meta.get("kind", "qa") in ("qa", "reference"):
            key = (str(intent), meta.get("voice"))
            if per_key[key] < cfg.max_references:
                per_key[key] += 1
                keep = True
        if state["probe"] < cfg.max_classifier_references:
            state["probe"] += 1
            keep = True
        return keep

    return pick


def check_codes(lm: LM, dialogues: Sequence[Dialogue], split: str) -> None:
    """The records must hold codes the LM models: [n_q, T], values below its codebook size."""
    for d in dialogues:
        for name, c in (("user", d.user), ("agent", d.agent)):
            if c.ndim != 2 or c.shape[0] != lm.n_q:
                raise ValueError(f"record {d.id!r} ({split}): {name} codes shaped {list(c.shape)}, the LM models "
                                 f"[{lm.n_q}, T]")
            if c.size and (int(c.max()) >= lm.card or int(c.min()) < ABSENT_CODE):
                raise ValueError(f"record {d.id!r} ({split}): {name} codes in [{int(c.min())}, {int(c.max())}] do "
                                 f"not fit the LM's codebook size {lm.card}")


def right_answer(dialogues: Sequence[Dialogue], generated: Sequence[np.ndarray], gen_speaking, true_speaking,
                 by_intent: dict[str, list[tuple[str | None, str, torch.Tensor]]], codec,
                 window: int | None = None) -> dict[str, Any]:
    """Top-1/top-3 intent accuracy of the generated replies by DTW against every intent's references;
    when the records say how the question was phrased (``meta["heldout_phrasing"]``, the dialogue
    builder's), also separately for phrasings training saw (``seen``) and never saw (``heldout``)."""
    intents = sorted(by_intent)
    res: dict[str, Any] = {"method": "DTW over codec latents (1 - cosine), path-normalised; references of the "
                                     "same agent voice when the intent has one",
                           "n_intents": len(intents), "chance": 1 / len(intents) if intents else None,
                           "references": sum(len(v) for v in by_intent.values())}
    qa = [(d, g, gs, ts) for d, g, gs, ts in zip(dialogues, generated, gen_speaking, true_speaking)
          if d.intent is not None and d.intent in by_intent]
    res["interrupted_excluded"] = sum(bool(d.interruptions()) for d, *_ in qa)
    qa = [q for q in qa if not q[0].interruptions()]  # their first answer is cut off by design
    res["n"] = len(qa)
    if not qa or len(intents) < 2:
        res.update(top1=None, top3=None, reference_top1=None, silent_replies=None)
        return res

    def ranking(z: torch.Tensor, voice: str | None, own: str) -> list[str]:
        refs, owner = [], []
        for k, intent in enumerate(intents):
            cands = [(v, r) for v, i, r in by_intent[intent] if i != own]  # never the dialogue's own reply
            cands = [r for v, r in cands if v == voice] or [r for _, r in cands]
            refs += cands
            owner += [k] * len(cands)
        scores = torch.full((len(intents),), math.inf)
        if refs:  # every intent's references in one batched DTW
            scores = scores.scatter_reduce(0, torch.tensor(owner), dtw_distances(z, refs), "amin")
        return [intents[k] for k in torch.argsort(scores, stable=True).tolist()]

    rows = []  # (heldout phrasing or None, top1, top3, reference top1, silent)
    for d, g, gs, ts in qa:
        span = _reply(d, gs, window)
        hit1 = hit3 = ref = False
        if span is not None:
            rank = ranking(latents(codec, g[:, span[0]:span[1]]), d.voice, d.id)
            hit1, hit3 = rank[0] == d.intent, d.intent in rank[:3]
        turns = _true_turns(d, ts)
        if turns:
            a, b = max(turns, key=lambda s: s[1] - s[0])
            ref = ranking(latents(codec, d.agent[:, a:b].clip(min=0)), d.voice, d.id)[0] == d.intent
        held = d.meta.get("heldout_phrasing")
        rows.append((None if held is None else bool(held), hit1, hit3, ref, span is None))

    def summary(part: list[tuple]) -> dict[str, Any]:
        n = len(part)
        return {"n": n, "top1": sum(r[1] for r in part) / n, "top3": sum(r[2] for r in part) / n,
                "reference_top1": sum(r[3] for r in part) / n, "silent_replies": sum(r[4] for r in part) / n}

    return _by_phrasing(res, rows, summary)


def answer_texts(renderings: Sequence[Rendering], dialogues: Sequence[Dialogue]) -> dict[str, list[tuple[int, ...]]]:
    """Every intent's answer as token sequences (the words of its inner-monologue text): from the
    reference renderings that recorded their text, or, without them, the first agent turn of the
    given QA dialogues."""
    out: dict[str, set[tuple[int, ...]]] = {}
    for r in renderings:
        if r.intent is not None and r.words:
            out.setdefault(r.intent, set()).add(r.words)
    if not out:
        for d in dialogues:
            turns = d.agent_turns()
            if d.intent is not None and d.text is not None and turns:
                words = _words(d.text[turns[0][0]:turns[0][1]])
                if words:
                    out.setdefault(d.intent, set()).add(words)
    return {k: sorted(v) for k, v in out.items()}


def _words(tokens: np.ndarray, epad: int = EPAD_ID) -> tuple[int, ...]:
    """The word tokens of a per-frame text stream: no EPAD, no specials, no -1 (no text)."""
    t = np.asarray(tokens)
    return tuple(int(x) for x in t[(t >= len(SPECIALS)) & (t != epad)])


def right_answer_text(dialogues: Sequence[Dialogue], texts: Sequence[np.ndarray],
                      answers: dict[str, list[tuple[int, ...]]], window: int, epad: int) -> dict[str, Any]:
    """Understanding apart from speaking: does the inner-monologue text the model wrote after the
    question (``window`` frames from where it ends, until the user speaks again) match the
    answer of the dialogue's intent best, among every intent's answers? Similarity of token
    sequences is difflib's ratio (2 x matched tokens / total). Also the share of replies whose
    words are exactly the intent's answer, and the ceiling: the record's own text stream."""
    intents = sorted(answers)
    res: dict[str, Any] = {"method": "token-sequence similarity (difflib ratio) of the generated inner-monologue "
                                     "text with every intent's answer text", "n_intents": len(intents),
                           "chance": 1 / len(intents) if intents else None}
    rows = []  # (heldout phrasing or None, top1, exact, own similarity, reference top1, silent)

    def best(words: tuple[int, ...]) -> tuple[str | None, float]:
        scored = [(max(SequenceMatcher(None, words, a, autojunk=False).ratio() for a in answers[i]), i)
                  for i in intents]
        score, intent = max(scored, key=lambda x: x[0]) if scored else (0.0, None)  # ties: the first intent
        return intent, score

    for d, text in zip(dialogues, texts):
        if d.intent is None or d.intent not in answers or d.interruptions():
            continue
        start, end = _reply_window(d, len(text), window)
        words = _words(text[start:end], epad)
        guess, _ = best(words) if words else (None, 0.0)
        own = max((SequenceMatcher(None, words, a, autojunk=False).ratio() for a in answers[d.intent]), default=0.0)
        ref = None
        turns = d.agent_turns()
        if d.text is not None and turns:
            ref = best(_words(d.text[turns[0][0]:turns[0][1]], epad))[0] == d.intent
        held = d.meta.get("heldout_phrasing")
        rows.append((None if held is None else bool(held), guess == d.intent, words in answers[d.intent], own, ref,
                     not words))

    def summary(part: list[tuple]) -> dict[str, Any]:
        n = len(part)
        refs = [r[4] for r in part if r[4] is not None]
        return {"n": n, "top1": sum(r[1] for r in part) / n, "exact": sum(r[2] for r in part) / n,
                "similarity": float(np.mean([r[3] for r in part])),
                "reference_top1": sum(refs) / len(refs) if refs else None,
                "silent_replies": sum(r[5] for r in part) / n}

    res["n"] = len(rows)
    if not rows:
        res.update(top1=None, exact=None, similarity=None, reference_top1=None, silent_replies=None)
        return res
    return _by_phrasing(res, rows, summary)


def _by_phrasing(res: dict[str, Any], rows: list[tuple], summary: Callable[[list[tuple]], dict[str, Any]]
                 ) -> dict[str, Any]:
    """``res`` with the summary of all ``rows`` and, when the rows say how each question was
    phrased (row[0]: held-out phrasing or not, None when unknown), of the seen and held-out ones."""
    res.update(summary(rows))
    if any(r[0] is not None for r in rows):
        for name, flag in (("seen", False), ("heldout", True)):
            part = [r for r in rows if r[0] is flag]
            res[f"{name}_phrasings"] = summary(part) if part else {"n": 0}
    return res


def voice_emotion_adherence(dialogues: Sequence[Dialogue], generated, gen_speaking, true_speaking,
                            probe_rows: list[tuple[np.ndarray, str | None, str | None]], codec) -> dict[str, Any]:
    """Voice and emotion classifiers (see the module docstring) on the generated replies."""
    notes: list[str] = []
    out: dict[str, Any] = {"method": "multinomial logistic regression (L-BFGS, L2 1e-3) on standardised "
                                     "mean+std of codec latents over a turn, trained on reference agent turns"}
    for key, col in (("voice", 1), ("emotion", 2)):
        rows = [(x, r[col]) for r in probe_rows for x in [r[0]] if r[col] is not None]
        classes = sorted({y for _, y in rows})
        entry: dict[str, Any] = {"classes": classes, "train_rows": len(rows)}
        if len(classes) < 2:
            entry.update(accuracy=None, classifier_accuracy=None, n=0)
            notes.append(f"{key} adherence skipped: the references hold {len(classes)} {key} class(es)")
            out[key] = entry
            continue
        probe = LinearProbe().fit(np.stack([x for x, _ in rows]), [y for _, y in rows])
        gen_x, gen_y, true_x, true_y = [], [], [], []
        for d, g, gs, ts in zip(dialogues, generated, gen_speaking, true_speaking):
            for a, b in _true_turns(d, ts):
                want = d.voice if key == "voice" else d.emotion_name(a, b)
                if want not in classes:
                    continue
                if b - a >= 2:
                    true_x.append(pooled(latents(codec, d.agent[:, a:b].clip(min=0))))
                    true_y.append(want)
                users = [u for u in d.user_turns() if u[1] <= a]
                start = users[-1][1] if users else 0
                span = speech_span(gs, start, b + (b - a))
                if span is not None and span[1] - span[0] >= 2:
                    gen_x.append(pooled(latents(codec, g[:, span[0]:span[1]])))
                    gen_y.append(want)
        entry["n"] = len(gen_y)
        entry["accuracy"] = (float(np.mean([p == y for p, y in zip(probe.predict(np.stack(gen_x)), gen_y)]))
                             if gen_y else None)
        entry["classifier_accuracy"] = (float(np.mean([p == y for p, y in zip(probe.predict(np.stack(true_x)),
                                                                                 true_y)])) if true_y else None)
        entry["chance"] = 1 / len(classes)
        out[key] = entry
    out["notes"] = notes
    return out


