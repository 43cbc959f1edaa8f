"""Code shards: write, read back exactly, reject malformed input."""

import numpy as np
import pytest

from maata.data.shards import Record, ShardReader, shard_paths, write_shard


def rec(i, t):
    rng = np.random.default_rng(i)
    return Record({"user": rng.integers(0, 1024, (8, t), dtype=np.int16),
                   "agent": rng.integers(0, 1024, (8, t), dtype=np.int16),
                   "text": rng.integers(0, 500, t, dtype=np.int32)}, {"id": f"d{i}", "voice": "female_1"})


def test_round_trip(tmp_path):
    records = [rec(i, t) for i, t in enumerate([5, 1, 17])]
    write_shard(tmp_path / "train" / "shard-00000.safetensors", records)
    reader = ShardReader(shard_paths(tmp_path, "train")[0])
    assert len(reader) == 3 and sorted(reader.fields) == ["agent", "text", "user"]
    for want, got in zip(records, reader):
        assert got.meta == want.meta
        for k in want.arrays:
            assert got.arrays[k].dtype == want.arrays[k].dtype
            np.testing.assert_array_equal(got.arrays[k], want.arrays[k])
    assert reader[-1].meta["id"] == "d2"
    with pytest.raises(IndexError):
        reader[3]


def test_bad_input(tmp_path):
    with pytest.raises(ValueError, match="at least one"):
        write_shard(tmp_path / "x.safetensors", [])
    bad = Record({"user": np.zeros((8, 3), np.int16), "text": np.zeros(4, np.int32)}, {"id": "b"})
    with pytest.raises(ValueError, match="different lengths"):
        write_shard(tmp_path / "x.safetensors", [bad])
    with pytest.raises(ValueError, match="fields"):
        write_shard(tmp_path / "x.safetensors", [rec(0, 3), Record({"codes": np.zeros((8, 3), np.int16)})])
    with pytest.raises(FileNotFoundError):
        ShardReader(tmp_path / "missing.safetensors")
    with pytest.raises(FileNotFoundError):
        shard_paths(tmp_path / "nothing")
