"""Manifests, phoneme vocab/frame labels, and the codec's training dataset."""

import json

import numpy as np
import pytest
import torch

from maata.data.dataset import CodecDataset
from maata.data.manifest import (ManifestError, ManifestRow, assign_splits, audio_path,
                                 check_speaker_disjoint, read_manifest, summarize, write_manifest)
from maata.data.phonemes import IGNORE, PhonemeVocab, frame_labels
from maata.data.synth import synthesize_corpus


def row(i=0, speaker="s0", **kw):
    base = dict(path=f"wavs/{i}.wav", duration=1.5, speaker=speaker, source="test", text="నమస్కారం")
    return ManifestRow(**{**base, **kw})


# --- manifest ----------------------------------------------------------------------------

def test_manifest_round_trip(tmp_path):
    rows = [row(0, phonemes=[(0.0, 0.1, "n"), (0.1, 0.25, "a")], split="train", meta={"gender": "f"}),
            row(1, speaker="s1")]
    path = write_manifest(tmp_path / "m.jsonl", rows)
    assert read_manifest(path) == rows
    first = json.loads(path.read_text(encoding="utf-8").splitlines()[0])
    assert first["text"] == "నమస్కారం" and first["phonemes"][1] == [0.1, 0.25, "a"]
    assert "meta" not in json.loads(path.read_text().splitlines()[1])
    assert audio_path(path, rows[0]) == tmp_path / "wavs/0.wav"


@pytest.mark.parametrize("line, message", [
    ("{not json", "not valid JSON"),
    ('["a list"]', "JSON object"),
    ('{"path": "a.wav", "duration": 1, "speaker": "s", "source": "x"}', "missing field"),
    ('{"path": "a.wav", "duration": 1, "speaker": "s", "source": "x", "text": "  "}', "text is empty"),
    ('{"path": "a.wav", "duration": -1, "speaker": "s", "source": "x", "text": "t"}', "positive"),
    ('{"path": "a.wav", "duration": "1", "speaker": "s", "source": "x", "text": "t"}', "number"),
    ('{"path": "a.wav", "duration": 1, "speaker": "", "source": "x", "text": "t"}', "speaker is empty"),
    ('{"path": "a.wav", "duration": 1, "speaker": "s", "source": "x", "text": "t", "split": "dev"}', "split"),
    ('{"path": "a.wav", "duration": 1, "speaker": "s", "source": "x", "text": "t", "phonemes": [[0, 1]]}',
     "bad phoneme entry"),
    ('{"path": "a.wav", "duration": 1, "speaker": "s", "source": "x", "text": "t", "phonemes": [[2, 1, "a"]]}',
     "bad phoneme segment"),
    ('{"path": "a.wav", "duration": 1, "speaker": "s", "source": "x", "text": "t", "extra": 1}', "unknown field"),
])
def test_malformed_manifest_lines_name_file_and_line(tmp_path, line, message):
    good = json.dumps(row().to_json(), ensure_ascii=False)
    path = tmp_path / "m.jsonl"
    path.write_text(f"{good}\n\n{line}\n", encoding="utf-8")
    with pytest.raises(ManifestError, match=f"m.jsonl:3: .*{message}"):
        read_manifest(path)


def test_missing_manifest(tmp_path):
    with pytest.raises(FileNotFoundError, match="manifest not found"):
        read_manifest(tmp_path / "nope.jsonl")


def test_splits_are_speaker_disjoint_deterministic_and_pinnable():
    rows = [row(i, speaker=f"spk{i % 20}") for i in range(100)]
    a = assign_splits(rows, seed=1)
    assert a == assign_splits(rows, seed=1) and a != assign_splits(rows, seed=2)
    check_speaker_disjoint(a)
    stats = summarize(a)
    assert (stats["train"].speakers, stats["valid"].speakers, stats["test"].speakers) == (16, 2, 2)
    assert stats["all"].clips == 100 and abs(stats["all"].hours - 100 * 1.5 / 3600) < 1e-9
    pinned = assign_splits(rows, group=lambda r: "g" + str(int(r.speaker[3:]) // 2), pinned={"g0": "train"})
    assert all(r.split == "train" for r in pinned if r.speaker in ("spk0", "spk1"))
    few = assign_splits([row(0, speaker="a"), row(1, speaker="b")])
    assert {r.split for r in few} == {"train"}
    with pytest.raises(ValueError, match="sum"):
        assign_splits(rows, fractions=(0.5, 0.1, 0.1))
    with pytest.raises(ManifestError, match="more than one split"):
        check_speaker_disjoint([row(0, split="train"), row(1, split="test")])


# --- phonemes ----------------------------------------------------------------------------

def test_vocab_orders_by_frequency_caps_and_round_trips(tmp_path):
    aligned = [[(0, 1, "a"), (1, 2, "_"), (2, 3, "b"), (3, 4, "a"), (4, 5, "c"), (5, 6, "_:")]]
    vocab = PhonemeVocab.build(aligned, max_size=4)
    assert vocab.symbols == ("<sil>", "<other>", "a", "b")
    assert [vocab.id_of(s) for s in ("_", "_:", "a", "b", "c")] == [0, 0, 2, 3, 1]
    assert PhonemeVocab.load(vocab.save(tmp_path / "v.json")) == vocab
    assert PhonemeVocab.build([[(0, 1, str(i))] for i in range(300)]).__len__() == 128
    with pytest.raises(FileNotFoundError):
        PhonemeVocab.load(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="not a phoneme vocab"):
        PhonemeVocab.load(tmp_path / "bad.json")


def test_frame_labels_at_frame_centres():
    alignment = [(0.0, 0.1, 2), (0.1, 0.2, 3), (0.3, 0.4, 0)]
    labels = frame_labels(alignment, 12, 25.0)   # frames of 40 ms, centres 20, 60, 100, ...
    assert labels.dtype == np.int64
    assert labels.tolist() == [2, 2, 3, 3, 3, -100, -100, 0, 0, 0, -100, -100]
    # a crop starting at 0.1 s: centres at 0.12, 0.16, 0.20 (the gap after "3" starts at 0.2)
    assert frame_labels(alignment, 3, 25.0, start_s=0.1).tolist() == [3, 3, -100]
    assert (frame_labels(None, 5, 25.0) == IGNORE).all()
    with pytest.raises(ValueError):
        frame_labels(alignment, 5, 0.0)


# --- dataset -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("corpus")
    report = synthesize_corpus(out, 10, workers=1, seed=0, festival_fraction=0.2,
                               variants=["f1", "m1", "klatt", "Andy"], progress=False)
    return report.manifest, PhonemeVocab.load(report.vocab)


def test_items_have_the_contracted_shapes(corpus):
    manifest, vocab = corpus
    ds = CodecDataset(manifest, "train", segment_seconds=2.0, vocab=vocab)
    item = ds[0]
    assert item["wav"].shape == (1, 32000) and item["wav"].dtype == torch.float32
    assert item["phonemes"].shape == (50,) and item["phonemes"].dtype == torch.int64
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=2)))
    assert batch["wav"].shape == (2, 1, 32000) and batch["phonemes"].shape == (2, 50)


def test_labels_follow_the_alignment_of_the_crop(corpus):
    manifest, vocab = corpus
    ds = CodecDataset(manifest, "train", segment_seconds=1.0, vocab=vocab)
    for i, (_, r) in enumerate(ds.items):
        labels = ds[i]["phonemes"].numpy()
        if r.phonemes is None:              # festival clips: no alignment
            assert (labels == IGNORE).all()
        else:
            assert (labels != IGNORE).mean() > 0.9 and labels.max() < len(vocab)
            assert (labels >= 2).sum() > 10     # mostly real phonemes, not silence/other
    assert (CodecDataset(manifest, "train", 1.0)[0]["phonemes"] == IGNORE).all()  # no vocab


def test_deterministic_per_seed_epoch_index(corpus):
    manifest, vocab = corpus
    a = CodecDataset(manifest, "train", 1.0, vocab=vocab, augment=True, seed=3)
    b = CodecDataset(manifest, "train", 1.0, vocab=vocab, augment=True, seed=3)
    i = next(k for k, (_, r) in enumerate(a.items) if r.duration > 2.5)  # room to crop
    assert torch.equal(a[i]["wav"], b[i]["wav"]) and torch.equal(a[i]["phonemes"], b[i]["phonemes"])
    crops = set()
    for epoch in range(4):
        a.set_epoch(epoch)
        crops.add(a[i]["wav"].numpy().tobytes())
    assert len(crops) == 4
    a.set_epoch(0)
    b.set_epoch(0)
    assert torch.equal(a[i]["wav"], b[i]["wav"])


def test_short_clips_are_zero_padded(corpus):
    manifest, vocab = corpus
    ds = CodecDataset(manifest, "train", segment_seconds=12.0, vocab=vocab)
    _, r = ds.items[0]
    item = ds[0]
    n = int(round(r.duration * 16000))
    assert item["wav"][0, n + 10:].abs().max() == 0 and item["wav"][0, :n].abs().max() > 0.05
    tail = item["phonemes"][int(r.duration * 25) + 1:]
    assert (tail == IGNORE).all()


def test_bad_arguments_and_missing_audio(corpus, tmp_path):
    manifest, _ = corpus
    with pytest.raises(ValueError, match="split"):
        CodecDataset(manifest, "dev", 1.0)
    with pytest.raises(ValueError, match="shorter than one hop"):
        CodecDataset(manifest, "train", 0.01)
    with pytest.raises(FileNotFoundError):
        CodecDataset(tmp_path / "none.jsonl", "train", 1.0)
    write_manifest(tmp_path / "m.jsonl", [row(0, split="valid")])
    with pytest.raises(ValueError, match="no rows with split 'train'"):
        CodecDataset(tmp_path / "m.jsonl", "train", 1.0)
    ds = CodecDataset(tmp_path / "m.jsonl", "valid", 1.0)
    with pytest.raises(FileNotFoundError):
        ds[0]
    with pytest.raises(IndexError):
        ds[5]


def test_several_manifests_combine(corpus):
    manifest, vocab = corpus
    one = CodecDataset(manifest, "train", 1.0)
    two = CodecDataset([manifest, manifest], "train", 1.0)
    assert len(two) == 2 * len(one)
