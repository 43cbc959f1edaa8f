"""The training loop every trainer shares: ``Trainer``, which the codec trainer
(``training/codec_trainer.py``) and the LM trainer (``training/lm_trainer.py``) extend.

The base owns what does not depend on the model:

* setup: torch threads, the process group (``training/distributed.py``), seeding (identical
  initial weights on every rank, then a stream per rank), refusing to overwrite a run;
* the data position: epochs and batches drawn from the sampler's (seed, epoch) permutation,
  so a resumed run continues with exactly the batches it had not consumed;
* the loop: ``train_step`` per batch, a metrics window averaged over steps and ranks every
  ``log_every`` steps (TensorBoard, the loss history), validation every ``eval_every`` steps,
  a checkpoint + export + PNG of the curves every ``checkpoint_every`` steps, and both once
  more at the last step when none fell on it;
* checkpoints (``training/checkpointing.py``): the modules' weights, every rank's RNG, the data
  position, the history and the config, plus the subclass's optimisers and schedulers.

A subclass builds its models and optimisers (``build``), its datasets (``build_data``), wraps
the modules for DDP (``wrap``), and defines ``train_step``, ``validate``, the checkpointed
modules and state (``checkpoint_modules``, ``optimiser_state`` / ``load_optimiser_state``),
``export`` and the scalars of a metrics window (``window_scalars``).
"""

from __future__ import annotations

import itertools
import logging
import random
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from maata import config as cfglib
from training import checkpointing, distributed

log = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).parent / "configs"


# -- configuration ----------------------------------------------------------------------------
@dataclass
class RunConfig:
    """The settings of a run that every trainer has; a trainer's config extends it (and may give
    ``steps`` another default). ``data`` (with ``num_workers``) is the subclass's."""

    steps: int = 100_000
    batch_size: int = 8  # per process
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    bf16: bool = True  # bf16 autocast (CUDA only; CPU trains in float32)
    threads: int = 0  # torch intra-op threads per process (0: torch's default)
    log_every: int = 50
    eval_every: int = 1000
    checkpoint_every: int = 1000
    keep_last: int = 3


# -- helpers the trainers share ---------------------------------------------------------------
def resolve_config_path(name_or_path: str | Path) -> Path:
    """A YAML path, or the name of a file in ``training/configs`` (``codec_smoke``)."""
    p = Path(name_or_path)
    if p.exists():
        return p
    named = CONFIG_DIR / (p.name if p.suffix else f"{p.name}.yaml")
    if not p.parent.parts and named.exists():
        return named
    raise FileNotFoundError(f"training config not found: {name_or_path}")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def to_yaml(data: dict[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def plot_history(history: dict[str, list[list[float]]], path: Path, groups: Mapping[str, tuple[str, ...]]) -> None:
    """Curves of ``history`` (key -> [[step, value], ...]) to a PNG, one panel per entry of
    ``groups`` (panel title -> history keys) that has data (a stage without, say, a text stream
    gets no empty panel); headless (Agg), written atomically."""
    groups = {title: names for title, names in groups.items() if any(history.get(n) for n in names)} or groups
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(groups), figsize=(5 * len(groups), 3.5), squeeze=False)
    for ax, (title, names) in zip(axes[0], groups.items()):
        for name in names:
            if history.get(name):
                steps, values = zip(*history[name])
                ax.plot(steps, values, label=name, marker="." if len(steps) < 30 else None)
        ax.set_title(title)
        ax.set_xlabel("step")
        if ax.lines:
            ax.legend()
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)


# -- the trainer -------------------------------------------------------------------------------
class Trainer:
    """One training run: models, optimisers, data position, logging and checkpoints, for a
    ``cfg`` that extends ``RunConfig`` and has ``data.num_workers``."""

    #: the progress bar's label, and the window metrics it shows
    progress_desc = "train"
    progress_keys: tuple[str, ...] = ()
    #: window metrics appended to ``history`` (the loss curves) at every log
    history_keys: tuple[str, ...] = ()
    #: panels of ``<out>/loss_curves.png``: title -> history keys
    plot_groups: Mapping[str, tuple[str, ...]] = {}

    def __init__(self, cfg: RunConfig, out_dir: str | Path, *, resume: bool = False,
                 info: distributed.DistInfo | None = None) -> None:
        self.cfg, self.out = cfg, Path(out_dir)
        if cfg.threads > 0:
            torch.set_num_threads(cfg.threads)
        self.info = info or distributed.init(cfg.device)
        self.device = self.info.device
        if not resume and checkpointing.latest(self.out) is not None:
            raise ValueError(f"{self.out} already holds checkpoints; pass --resume to continue, or another --out")
        seed_everything(cfg.seed)  # identical initial weights on every rank
        self.build(resume)
        self.step = self.epoch = self.batch_in_epoch = 0
        self.history: dict[str, list[list[float]]] = {}
        self.build_data()
        seed_everything(cfg.seed + 1 + self.info.rank)  # per-rank streams (dropout, quantizer dropout, ...)
        if resume:
            self._resume()
        self.wrap()
        self._reset_window()
        self.writer = self._writer()

    # -- what a subclass defines -------------------------------------------------------------------
    def build(self, resume: bool) -> None:
        """Models, losses, optimisers and schedulers (on ``self.device``)."""
        raise NotImplementedError

    def build_data(self) -> None:
        """``self.train_set``, ``self.train_sampler``, ``self.batches_per_epoch``, ``self.valid_set``."""
        raise NotImplementedError

    def wrap(self) -> None:
        """The modules that train, wrapped for DDP (``distributed.wrap``)."""
        raise NotImplementedError

    def train_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """One optimisation step; the step's detached metrics (scalar tensors)."""
        raise NotImplementedError

    def validate(self) -> None:
        """The periodic validation (every rank joins; rank 0 writes)."""
        raise NotImplementedError

    def checkpoint_modules(self) -> dict[str, nn.Module]:
        """The modules a checkpoint holds, by file name."""
        raise NotImplementedError

    def optimiser_state(self) -> dict[str, Any]:
        """The optimisers' and schedulers' states (and anything else of the subclass's) for a checkpoint."""
        raise NotImplementedError

    def load_optimiser_state(self, state: Mapping[str, Any]) -> None:
        """Restore what ``optimiser_state`` wrote (the step is already restored)."""
        raise NotImplementedError

    def export(self) -> Path:
        """The inference export beside the run (rank 0)."""
        raise NotImplementedError

    def window_scalars(self, means: dict[str, float], steps_per_s: float) -> dict[str, float]:
        """TensorBoard scalars of a metrics window (``means``: the window's metric means over
        steps and ranks; a subclass may pop entries it reports otherwise). Called on every rank:
        it may run collectives."""
        raise NotImplementedError

    def collate_fn(self) -> Callable | None:
        """The training DataLoader's ``collate_fn`` (None: torch's default)."""
        return None

    def epoch_generator(self) -> torch.Generator | None:
        """The training DataLoader's ``generator`` for ``self.epoch`` (None: torch's global RNG)."""
        return None

    def write_run_files(self) -> None:
        """Files written once at the start of a run beside ``config.yaml`` (rank 0)."""

    # -- setup ---------------------------------------------------------------------------------------
    def _writer(self):
        if not self.info.is_main:
            return None
        from torch.utils.tensorboard import SummaryWriter

        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "config.yaml").write_text(to_yaml(cfglib.to_dict(self.cfg)), encoding="utf-8")
        self.write_run_files()
        return SummaryWriter(str(self.out / "tb"), purge_step=self.step or None)

    def _autocast(self) -> AbstractContextManager:
        if self.device.type == "cuda" and self.cfg.bf16:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return nullcontext()

    # -- data position ---------------------------------------------------------------------------------
    def _batches(self) -> Iterator[dict[str, torch.Tensor]]:
        """Batches from the current (epoch, batch_in_epoch) position onwards, forever.

        Each epoch's order comes from the sampler's (seed, epoch) permutation alone, so a
        resumed run skips exactly the batches it had consumed and sees the same ones after.
        """
        bs = self.cfg.batch_size
        while True:
            self.train_sampler.set_epoch(self.epoch)
            self.train_set.set_epoch(self.epoch)
            order = list(self.train_sampler)[: self.batches_per_epoch * bs]
            loader = DataLoader(self.train_set, batch_size=bs, sampler=order[self.batch_in_epoch * bs:],
                                num_workers=self.cfg.data.num_workers, drop_last=True, collate_fn=self.collate_fn(),
                                pin_memory=self.device.type == "cuda", generator=self.epoch_generator())
            yield from loader
            self.epoch += 1
            self.batch_in_epoch = 0

    @contextmanager
    def valid_batches(self) -> Iterator[Iterator[dict[str, torch.Tensor]]]:
        """This rank's share of the valid split in order, at most ``data.valid_max_batches``
        batches (collated like training), read with the RNG streams preserved so that a
        validation pass does not change what training draws next."""
        loader = DataLoader(self.valid_set, batch_size=self.cfg.batch_size, collate_fn=self.collate_fn(),
                            sampler=distributed.sampler(self.valid_set, self.info, shuffle=False, seed=self.cfg.seed),
                            num_workers=self.cfg.data.num_workers)
        with checkpointing.preserved_rng():
            yield itertools.islice(loader, self.cfg.data.valid_max_batches)

    # -- the loop ----------------------------------------------------------------------------------------
    def fit(self) -> dict[str, float]:
        """Train until ``cfg.steps``; returns the last logged metrics."""
        from tqdm import tqdm

        last: dict[str, float] = {}
        bar = tqdm(total=self.cfg.steps, initial=self.step, disable=not self.info.is_main, dynamic_ncols=True,
                   desc=self.progress_desc, unit="step")
        batches = self._batches()
        try:
            while self.step < self.cfg.steps:
                metrics = self.train_step(next(batches))
                self.step += 1
                self.batch_in_epoch += 1
                self._accumulate(metrics)
                bar.update(1)
                last = self._periodic(bar) or last
            # the run's last steps are logged, and its last step gets a validation pass and a
            # checkpoint if none fell on it (decided by the step alone, so every rank joins the
            # same collectives)
            if self._window_steps:
                last = self._log() or last
            if self.step % self.cfg.eval_every:
                self._validate()
            if self.step % self.cfg.checkpoint_every:
                self.save()
        finally:
            bar.close()
            if self.writer is not None:
                self.writer.close()
        return last

    def _periodic(self, bar) -> dict[str, float] | None:
        """Logging, validation and checkpoints due at the current step."""
        logged = None
        if self.step % self.cfg.log_every == 0:
            logged = self._log()
            bar.set_postfix({k: f"{logged[k]:.3g}" for k in self.progress_keys if k in logged})
        if self.step % self.cfg.eval_every == 0:
            self._validate()
        if self.step % self.cfg.checkpoint_every == 0:
            self.save()
        return logged

    # -- logging -----------------------------------------------------------------------------------------
    def _reset_window(self) -> None:
        self._sums: dict[str, torch.Tensor] = {}
        self._counts: dict[str, int] = {}
        self._window_start, self._window_steps, self._paused = time.perf_counter(), 0, 0.0

    def _accumulate(self, metrics: dict[str, torch.Tensor]) -> None:
        for k, v in metrics.items():
            self._sums[k] = self._sums.get(k, 0) + v.float()
            self._counts[k] = self._counts.get(k, 0) + 1
        self._window_steps += 1

    def _log(self) -> dict[str, float]:
        """Average the window's metrics over steps and ranks; rank 0 writes TensorBoard and the history."""
        keys = sorted(self._sums)
        packed = torch.stack([self._sums[k].to(self.device) for k in keys]
                             + [torch.tensor(float(self._counts[k]), device=self.device) for k in keys])
        distributed.all_reduce_sum(packed)
        means = {k: float(packed[i] / packed[len(keys) + i]) for i, k in enumerate(keys)}
        elapsed = max(time.perf_counter() - self._window_start - self._paused, 1e-9)
        speed = self._window_steps / elapsed
        scalars = self.window_scalars(means, speed)
        if self.info.is_main:
            for name, value in scalars.items():
                self.writer.add_scalar(name, value, self.step)
            for k in self.history_keys:
                if k in means:
                    self.history.setdefault(k, []).append([self.step, means[k]])
        self._reset_window()
        return dict(means, steps_per_s=speed)

    def _validate(self) -> None:
        t0 = time.perf_counter()
        self.validate()
        self._paused += time.perf_counter() - t0

    # -- checkpoints ---------------------------------------------------------------------------------------
    def training_state(self, rng: list[Any]) -> dict[str, Any]:
        """What a checkpoint's ``state.pt`` holds besides the step (``checkpointing.save`` adds it)."""
        return {"epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch, **self.optimiser_state(), "rng": rng,
                "world_size": self.info.world_size, "history": self.history, "config": cfglib.to_dict(self.cfg)}

    def save(self) -> None:
        """Checkpoint (all ranks contribute their RNG state; rank 0 writes), export and plot."""
        t0 = time.perf_counter()
        rng = distributed.all_gather_objects(checkpointing.capture_rng(), self.info)
        if self.info.is_main:
            path = checkpointing.save(self.out, self.step, self.checkpoint_modules(), self.training_state(rng),
                                      self.cfg.keep_last)
            self.export()
            plot_history(self.history, self.out / "loss_curves.png", self.plot_groups)
            log.info("step %d: checkpoint %s", self.step, path)
        distributed.barrier()
        self._paused += time.perf_counter() - t0

    def _resume(self) -> None:
        path = checkpointing.latest(self.out)
        if path is None:
            log.info("no checkpoint in %s: starting a new run", self.out)
            return
        state = checkpointing.load(path, self.checkpoint_modules(), self.device)
        self.step, self.epoch, self.batch_in_epoch = (int(state["step"]), int(state["epoch"]),
                                                      int(state["batch_in_epoch"]))
        self.load_optimiser_state(state)
        self.history = state["history"]
        if int(state["world_size"]) == self.info.world_size:
            checkpointing.restore_rng(state["rng"][self.info.rank])
        else:
            log.warning("checkpoint written by %s process(es), resuming on %d: RNG streams are re-seeded",
                        state["world_size"], self.info.world_size)
        log.info("resumed from %s (step %d, epoch %d, batch %d)", path, self.step, self.epoch, self.batch_in_epoch)


def run(trainer: Callable[..., Trainer], cfg: RunConfig, out_dir: str | Path, *, resume: bool = False) -> dict[str, float]:
    """Train with ``trainer(cfg, out_dir, resume=..., info=...)`` in one process, or in one of the
    processes torchrun started. Returns the last logged metrics on rank 0 (an empty dict on the
    other ranks)."""
    info = distributed.init(cfg.device)
    if not info.is_main:
        logging.getLogger().setLevel(logging.WARNING)
    try:
        metrics = trainer(cfg, out_dir, resume=resume, info=info).fit()
        return metrics if info.is_main else {}
    finally:
        distributed.cleanup()


__all__ = ["CONFIG_DIR", "RunConfig", "Trainer", "plot_history", "resolve_config_path", "run", "seed_everything", "to_yaml"]
