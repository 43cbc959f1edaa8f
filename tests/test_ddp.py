"""Two-process DDP codec training on CPU (gloo): the replicas must stay identical.

The test launches this very file under ``python -m torch.distributed.run --nproc_per_node 2``;
each rank trains a few steps of the smoke config (discriminators included, quantizer dropout
and dead-code re-seeding active), then dumps every parameter and buffer of the codec and the
discriminator. Identical dumps prove that gradients are all-reduced and that the EMA quantizer
keeps its codebooks in sync without DDP broadcasting buffers.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from tests.support.corpus import smoke_config, write_corpus
from tests.support.ddp import dump_rank, run_two_ranks, weights_digest

STEPS = 3


def test_two_cpu_processes_keep_identical_replicas(tmp_path):
    manifest = write_corpus(tmp_path / "corpus", n_train=8, n_valid=2)
    out = tmp_path / "run"
    r0, r1 = run_two_ranks(__file__, manifest, out)
    assert r0["step"] == r1["step"] == STEPS
    assert r0["tensors"].keys() == r1["tensors"].keys()
    quantizer = [k for k in r0["tensors"] if ".quantizer." in k and k.rsplit(".", 1)[-1] in
                 ("embed", "embed_sum", "cluster_size", "initialized")]
    assert quantizer and all(r0["tensors"][k].dtype == torch.bool or r0["tensors"][k].abs().sum() > 0
                             for k in quantizer)
    differ = [k for k in r0["tensors"] if not torch.equal(r0["tensors"][k], r1["tensors"][k])]
    assert not differ, differ[:10]
    assert r0["initial"] != r0["final"]  # training did move the weights
    assert (out / "codec.safetensors").exists() and (out / "checkpoints" / f"step_{STEPS:08d}").is_dir()


def _worker(manifest: str, out: str) -> None:
    """One rank: train, then dump this replica's parameters and buffers."""
    from training import distributed
    from training.codec_trainer import CodecTrainer

    torch.set_num_threads(1)
    cfg = smoke_config(Path(manifest), steps=STEPS, adv_start_step=1, eval_every=STEPS, checkpoint_every=STEPS,
                       device="cpu")
    info = distributed.init("cpu")
    trainer = CodecTrainer(cfg, out, info=info)
    initial = weights_digest(trainer.codec)
    trainer.fit()
    tensors = {f"codec.{k}": v for k, v in trainer.codec.state_dict().items()}
    tensors.update({f"disc.{k}": v for k, v in trainer.disc.state_dict().items()})
    dump_rank(out, info.rank, step=trainer.step, tensors=tensors, initial=initial, final=weights_digest(trainer.codec))
    distributed.cleanup()


if __name__ == "__main__":
    _worker(*sys.argv[1:3])
