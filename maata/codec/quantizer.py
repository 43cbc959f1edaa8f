"""Residual vector quantisation with EMA codebooks, dead-code replacement and quantizer dropout.

Each level projects the residual into a low-dimensional code space (DAC's factorised codes,
optionally L2-normalised so lookup is cosine similarity), finds the nearest code, and projects
back. Codebooks learn by exponential moving averages of the vectors assigned to them (decay
0.99). A code is dead when its EMA usage falls below ``dead_code_threshold`` × the mean usage
(relative, so the rule means the same at any batch size); dead codes are re-seeded from
vectors of the current batch. Under ``torch.distributed`` the EMA statistics are summed over
ranks and re-seeding vectors come from rank 0, so every replica keeps identical codebooks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from maata.codec.layers import version_key

# A code value meaning "not transmitted" (adaptive bitrate drops upper levels in silence).
DROPPED = -1


def _dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def eager_inference(module: nn.Module) -> bool:
    """Whether cached inference tables may be used: eval mode, no autograd, not being traced by
    torch.compile (which fuses the plain formulas itself and cannot guard on the caches)."""
    return not (module.training or torch.is_grad_enabled() or torch.compiler.is_compiling())


class VectorQuantizer(nn.Module):
    def __init__(self, dim: int, codebook_size: int, codebook_dim: int, *, l2norm: bool = True,
                 ema: bool = True, decay: float = 0.99, dead_code_threshold: float = 0.5, eps: float = 1e-5):
        super().__init__()
        self.codebook_size, self.codebook_dim = codebook_size, codebook_dim
        self.l2norm, self.ema, self.decay = l2norm, ema, decay
        self.dead_code_threshold, self.eps = dead_code_threshold, eps
        self.proj_in = nn.Linear(dim, codebook_dim) if codebook_dim != dim else nn.Identity()
        self.proj_out = nn.Linear(codebook_dim, dim) if codebook_dim != dim else nn.Identity()
        embed = torch.randn(codebook_size, codebook_dim)
        if l2norm:
            embed = F.normalize(embed, dim=-1)
        if ema:
            self.register_buffer("embed", embed)
            self.register_buffer("cluster_size", torch.ones(codebook_size))
            self.register_buffer("embed_sum", embed.clone())
        else:
            self.embed = nn.Parameter(embed)
        self.register_buffer("initialized", torch.tensor(False))

    # -- lookup -------------------------------------------------------------------------------
    def _codebook(self) -> torch.Tensor:
        if not self.l2norm:
            return self.embed
        if not eager_inference(self):
            return F.normalize(self.embed, dim=-1)
        # inference: normalise once per codebook version, not once per call
        key = version_key(self.embed)
        if getattr(self, "_cb_key", None) != key:
            self._cb_cache, self._cb_key = F.normalize(self.embed, dim=-1), key
        return self._cb_cache

    def _project(self, x: torch.Tensor) -> torch.Tensor:
        """[B, D, T] -> [B, T, d] in code space."""
        z = self.proj_in(x.transpose(1, 2))
        return F.normalize(z, dim=-1) if self.l2norm else z

    def _nearest(self, z: torch.Tensor) -> torch.Tensor:
        cb = self._codebook()
        if self.l2norm:
            return (z @ cb.t()).argmax(-1)
        d = z.pow(2).sum(-1, keepdim=True) - 2 * z @ cb.t() + cb.pow(2).sum(-1)
        return d.argmin(-1)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """[B, D, T] -> codes [B, T]."""
        return self._nearest(self._project(x))

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [B, T] -> [B, D, T]."""
        return self.proj_out(F.embedding(codes, self._codebook())).transpose(1, 2)

    def sources(self) -> tuple[torch.Tensor, ...]:
        """The tensors the inference maps are computed from (their versions key a cache)."""
        linears = [m for m in (self.proj_in, self.proj_out) if isinstance(m, nn.Linear)]
        return (self.embed, *(t for m in linears for t in (m.weight, m.bias)))

    @torch.no_grad()
    def inference_maps(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(A [K, D], c [K], table [K, D]) for lookup-only inference on residuals r [.., D]:
        the nearest code is argmax(A r + c) and its quantised vector is table[code].

        The projection in is affine and L2 normalisation only rescales a vector, so
        argmax(cb · normalize(W r + b)) = argmax((cb W) r + cb b); without normalisation the
        nearest code maximises 2 cb · z - |cb|². The table is every code already projected out.
        """
        cb = self._codebook()
        if isinstance(self.proj_in, nn.Linear):
            a, c = cb @ self.proj_in.weight, cb @ self.proj_in.bias
        else:
            a, c = cb, cb.new_zeros(cb.shape[0])
        if not self.l2norm:
            a, c = 2 * a, 2 * c - cb.pow(2).sum(-1)
        return a, c, self.proj_out(cb)

    # -- training -----------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, active: torch.Tensor | None = None):
        """x [B, D, T]; ``active`` bool [B] (quantizer dropout: rows whose level is off).

        Returns (quantized [B,D,T] with straight-through gradient, codes [B,T],
        commitment loss, codebook loss) — losses averaged over active rows.
        """
        z = self._project(x)  # [B, T, d]
        if self.training and self.ema and not bool(self.initialized):
            self._init_from(z.detach().reshape(-1, z.shape[-1]))
        codes = self._nearest(z)
        q = F.embedding(codes, self._codebook())
        w = torch.ones(z.shape[:2], device=z.device) if active is None else active[:, None].expand(z.shape[:2]).float()
        denom = w.sum().clamp(min=1.0) * z.shape[-1]
        commit = ((z - q.detach()).pow(2).sum(-1) * w).sum() / denom
        codebook_loss = z.new_zeros(())
        if self.training:
            if self.ema:
                self._ema_update(z.detach(), codes, w)
            else:
                codebook_loss = ((q - z.detach()).pow(2).sum(-1) * w).sum() / denom
        q_st = z + (q - z).detach() if self.training else q
        return self.proj_out(q_st).transpose(1, 2), codes, commit, codebook_loss

    @staticmethod
    def _sample(flat: torch.Tensor, n: int) -> torch.Tensor:
        """``n`` distinct rows of ``flat`` when it has enough; else with replacement plus a
        little noise, so no two codes start identical (identical codes tie forever)."""
        if flat.shape[0] >= n:
            return flat[torch.randperm(flat.shape[0], device=flat.device)[:n]].clone()
        pick = flat[torch.randint(0, flat.shape[0], (n,), device=flat.device)]
        return pick + 1e-3 * flat.std().clamp(min=1e-6) * torch.randn_like(pick)

    @torch.no_grad()
    def _init_from(self, flat: torch.Tensor) -> None:
        embed = self._sample(flat, self.codebook_size)
        if self.l2norm:
            embed = F.normalize(embed, dim=-1)
        n = torch.tensor(float(flat.shape[0]), device=flat.device)
        if _dist():
            dist.broadcast(embed, 0)
            dist.all_reduce(n)
        usage = float(n) / self.codebook_size  # start every code at the mean usage: none dead
        self.embed.copy_(embed)
        self.cluster_size.fill_(usage)
        self.embed_sum.copy_(embed * usage)
        self.initialized.fill_(True)

    @torch.no_grad()
    def _ema_update(self, z: torch.Tensor, codes: torch.Tensor, w: torch.Tensor) -> None:
        flat, c, wf = z.reshape(-1, z.shape[-1]), codes.reshape(-1), w.reshape(-1)
        onehot = torch.zeros(flat.shape[0], self.codebook_size, device=flat.device)
        onehot.scatter_(1, c[:, None], 1.0)
        onehot *= wf[:, None]
        counts = onehot.sum(0)
        sums = onehot.t() @ flat
        if _dist():
            dist.all_reduce(counts)
            dist.all_reduce(sums)
        self.cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.embed_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        n = self.cluster_size.sum()
        smoothed = (self.cluster_size + self.eps) / (n + self.codebook_size * self.eps) * n
        self.embed.copy_(self.embed_sum / smoothed[:, None])
        # re-seed dead codes from this batch's vectors (rank 0's, broadcast)
        dead = self.cluster_size < self.dead_code_threshold * self.cluster_size.mean()
        if _dist():
            dead = dead.float()
            dist.broadcast(dead, 0)
            dead = dead.bool()
        n_dead = int(dead.sum())
        if n_dead:
            live = flat[wf > 0] if (wf > 0).any() else flat
            pick = self._sample(live, n_dead)
            if self.l2norm:
                pick = F.normalize(pick, dim=-1)
            if _dist():
                dist.broadcast(pick, 0)
            usage = self.cluster_size.mean()
            self.embed[dead] = pick
            self.embed_sum[dead] = pick * usage
            self.cluster_size[dead] = usage


@dataclass
class RVQOutput:
    quantized: torch.Tensor  # [B, D, T]
    codes: torch.Tensor  # [B, n_q, T]
    commit_loss: torch.Tensor
    codebook_loss: torch.Tensor
    first_level: torch.Tensor  # [B, D, T] quantised output of codebook 1 (semantic head input)
    n_q: torch.Tensor  # [B] levels used per item


class ResidualVQ(nn.Module):
    def __init__(self, dim: int, n_q: int, codebook_size: int, codebook_dim: int, *, dropout_prob: float = 0.5,
                 **vq_kwargs):
        super().__init__()
        self.n_q, self.codebook_size, self.dropout_prob = n_q, codebook_size, dropout_prob
        self.levels = nn.ModuleList(VectorQuantizer(dim, codebook_size, codebook_dim, **vq_kwargs) for _ in range(n_q))

    def forward(self, x: torch.Tensor, n_q: int | None = None) -> RVQOutput:
        B = x.shape[0]
        n_q = n_q or self.n_q
        per_item = torch.full((B,), n_q, device=x.device, dtype=torch.long)
        if self.training and self.dropout_prob > 0:
            drop = torch.rand(B, device=x.device) < self.dropout_prob
            per_item = torch.where(drop, torch.randint(1, n_q + 1, (B,), device=x.device), per_item)
        residual, out = x, torch.zeros_like(x)
        codes, commit, cb_loss, first = [], x.new_zeros(()), x.new_zeros(()), None
        for i, vq in enumerate(self.levels[:n_q]):
            active = per_item > i
            q, c, cl, cbl = vq(residual, active)
            q = q * active[:, None, None].to(q.dtype)
            if first is None:
                first = q
            out = out + q
            residual = residual - q.detach() if self.training else residual - q
            codes.append(c)
            commit, cb_loss = commit + cl, cb_loss + cbl
        return RVQOutput(out, torch.stack(codes, 1), commit, cb_loss, first, per_item)

    @torch.no_grad()
    def encode(self, x: torch.Tensor, n_q: int | None = None) -> torch.Tensor:
        """[B, D, T] -> codes [B, n_q, T]."""
        if eager_inference(self):  # lookup tables: a few ops per level (streaming runs this every frame)
            residual, codes = x.transpose(1, 2), []
            for a, c, table in self._inference()[0][: n_q or self.n_q]:
                code = F.linear(residual, a, c).argmax(-1)
                residual = residual - F.embedding(code, table)
                codes.append(code)
            return torch.stack(codes, 1)
        residual, codes = x, []
        for vq in self.levels[: n_q or self.n_q]:
            c = vq.encode(residual)
            residual = residual - vq.decode(c)
            codes.append(c)
        return torch.stack(codes, 1)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [B, k, T] (k ≤ n_q; DROPPED entries contribute nothing) -> [B, D, T]."""
        if eager_inference(self):
            return self._decode_by_lookup(codes)
        out = None
        for i in range(codes.shape[1]):
            c = codes[:, i]
            keep = c != DROPPED
            q = self.levels[i].decode(c.clamp(min=0))
            q = q * keep[:, None, :].to(q.dtype)
            out = q if out is None else out + q
        return out

    @torch.no_grad()
    def _inference(self) -> tuple[list, torch.Tensor]:
        """Every level's inference maps, and their decode tables stacked [n_q * K, D]; rebuilt
        when any codebook or projection changes (training step, load_state_dict, .to())."""
        key = version_key(*(t for vq in self.levels for t in vq.sources()))
        if getattr(self, "_inference_key", None) != key:
            maps = [vq.inference_maps() for vq in self.levels]
            self._inference_cache = maps, torch.cat([table for _, _, table in maps])
            self._inference_key = key
        return self._inference_cache

    def _decode_by_lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """Inference decode in a few ops: one gather from the levels' stacked decode tables."""
        offsets = torch.arange(codes.shape[1], device=codes.device)[:, None] * self.codebook_size
        q = F.embedding(codes.clamp(min=0) + offsets, self._inference()[1])  # [B, k, T, D]
        q = q * (codes != DROPPED)[..., None].to(q.dtype)
        return q.sum(1).transpose(1, 2)

    def first_level(self, codes: torch.Tensor) -> torch.Tensor:
        return self.levels[0].decode(codes[:, 0])

    @torch.no_grad()
    def kmeans_init(self, latents: torch.Tensor, iters: int = 10, seed: int = 0) -> list[float]:
        """Initialise every level's codebook by k-means on encoder outputs ``latents`` [N, D]
        (the residual of the levels before it), as after an autoencoder warm-up (SoundStream,
        EnCodec). Spherical k-means when codes are L2-normalised. Returns each level's mean
        quantisation error of its residual, for the log. Under DDP, call it on every rank with
        the same ``latents`` (or broadcast rank 0's first)."""
        g = torch.Generator(device="cpu").manual_seed(seed)
        residual, errors = latents.float(), []
        for vq in self.levels:
            z = vq.proj_in(residual)
            if vq.l2norm:
                z = F.normalize(z, dim=-1)
            k = vq.codebook_size
            pick = torch.randperm(z.shape[0], generator=g)[:k].to(z.device)
            centers = z[pick].clone() if z.shape[0] >= k else VectorQuantizer._sample(z, k)
            for _ in range(iters):
                sim = z @ centers.t() if vq.l2norm else -torch.cdist(z, centers)
                codes = sim.argmax(-1)
                sums = torch.zeros_like(centers).index_add_(0, codes, z)
                counts = torch.bincount(codes, minlength=k).to(z.dtype)
                empty = counts == 0
                new = sums / counts.clamp(min=1)[:, None]
                if empty.any():  # an empty cluster restarts on a random point
                    new[empty] = z[torch.randint(0, z.shape[0], (int(empty.sum()),), generator=g).to(z.device)]
                centers = F.normalize(new, dim=-1) if vq.l2norm else new
            sim = z @ centers.t() if vq.l2norm else -torch.cdist(z, centers)
            codes = sim.argmax(-1)
            counts = torch.bincount(codes, minlength=k).to(z.dtype).clamp(min=1.0)
            if vq.ema:
                vq.embed.copy_(centers)
                vq.cluster_size.copy_(counts)
                vq.embed_sum.copy_(centers * counts[:, None])
            else:
                vq.embed.data.copy_(centers)
            vq.initialized.fill_(True)
            q = vq.proj_out(F.embedding(codes, vq._codebook()))
            residual = residual - q
            errors.append(float(residual.pow(2).mean()))
        return errors
