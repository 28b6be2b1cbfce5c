"""APOLLO and APOLLO-Mini, implemented from the paper's description.

Zhu et al., "APOLLO: SGD-like Memory, AdamW-level Performance", arXiv:2412.05270
(MLSys 2025). Written from the algorithm as published; no code of the CC-BY-NC
``apollo-torch`` package was consulted or used.

For a 2-D parameter ``W`` (m×n) with gradient ``G``, let ``k = min(m, n)`` and
``N = max(m, n)``. Work in the orientation where the short side comes first
(``G`` itself if m ≤ n, ``Gᵀ`` otherwise), so ``G`` is k×N and the N "channels"
are its columns (columns of W if m ≤ n, rows of W otherwise)::

    P  ~ N(0, 1/r)            r×k, regenerated every ``update_proj_gap`` steps
    R  = P·G                  r×N   projected gradient
    M  = β₁M + (1-β₁)R        r×N   } Adam moments in the projected space,
    V  = β₂V + (1-β₂)R²       r×N   } with bias correction
    R̃  = M̂ / (√V̂ + ε)
    s_j = ‖R̃[:, j]‖ / ‖R[:, j]‖        (channel-wise, APOLLO)
    s   = ‖R̃‖ / ‖R‖                    (tensor-wise, APOLLO-Mini)
    G̃  = α · G·diag(s)                full-rank raw gradient, rescaled
    if ‖G̃‖ > γ‖G̃_prev‖: G̃ ← G̃ · γ‖G̃_prev‖/‖G̃‖     (norm-growth limiter)
    W  ← W(1 - lr·λ) - lr·G̃            (decoupled weight decay, as AdamW)

Design choices (all configurable through :class:`ApolloConfig` or per param group):

* **State stored** per projected matrix: ``exp_avg`` and ``exp_avg_sq`` (r×N,
  float32), ``prev_norm`` (a 0-d float32 tensor, the limiter's ‖G̃_{t-1}‖) and the
  integer ``step``. The projection P is *not* stored: it is regenerated on every
  step from a private ``torch.Generator`` seeded with
  :func:`projection_seed` ``(seed, parameter index, refresh count)``. That costs one
  r×k Gaussian draw per matrix per step (cheap next to the matmul) and keeps the
  state at 2·r·N floats, which is what makes APOLLO-Mini's memory SGD-like
  (2·N floats per matrix instead of AdamW's 2·m·n). It also makes resumes exact:
  P depends only on (seed, index, step), never on the global RNG, which is never
  touched. The index is the parameter's position across the param groups, so a
  resume must build the groups in the same order (torch requires that anyway).
  Measured cost of regenerating instead of storing: ~0.1 s of a ~0.9 s rank-256
  step at SmolLM2-135M's shape on 2 CPU cores, against +18 % state (85 MiB) if stored.
* **Moments survive a projection refresh** (as in GaLore-style low-rank methods);
  the norm-growth limiter smooths the jump a new subspace can cause.
* **eps = 1e-6** (not torch's 1e-8): the scaling factors are ratios of norms, and
  ``R̃`` for channels whose projected second moment is tiny would otherwise blow up;
  1e-6 bounds ``R̃`` at ~10⁶·|M̂| in float32. Channels with ‖R[:, j]‖ = 0 get s_j = 0.
* **scale α**: APOLLO uses α = 1 (with rank 256). APOLLO-Mini uses α = √128 ≈ 11.3:
  a norm ratio estimated in a rank-r random subspace comes out smaller than the
  full-space one by roughly √(r/n), so with r = 1 the paper compensates with a fixed
  gradient scale factor, √128, instead of a per-matrix √(n/r).
* **The update is never materialised**: ‖G̃‖ for the limiter comes from the column
  norms of G, and ``W -= lr·α·G·diag(s)`` is one ``addcmul_``.
* **Fallback**: 1-D tensors, tensors that are not 2-D, tensors with fewer than
  ``min_numel`` elements and matrices with ``rank >= min(m, n)`` get plain AdamW
  (same betas/eps/weight decay) inside the same optimizer.
* States are float32 whatever the parameter dtype (bfloat16 parameters work), and
  :meth:`Apollo.load_state_dict` keeps them float32 (torch's default casts state
  to the parameter dtype, which would make a bfloat16 resume lossy).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from itertools import chain
from typing import Any

import torch

_SEED_STRIDE = 1_000_003  # > any realistic refresh count: (index, refresh) pairs never share a seed


@dataclass(frozen=True)
class ApolloConfig:
    """Hyper-parameters of APOLLO (``lr`` and ``weight_decay`` are passed separately)."""

    rank: int = 256
    """Rank r of the random projection (1 for APOLLO-Mini)."""
    scale: float = 1.0
    """Gradient scale factor α applied to the rescaled gradient."""
    scale_type: str = "channel"
    """'channel' (APOLLO: one factor per channel) or 'tensor' (APOLLO-Mini: one per matrix)."""
    update_proj_gap: int = 200
    """Steps between projection refreshes."""
    seed: int = 0
    """Base seed of the projections."""
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-6
    norm_growth_limit: float | None = 1.01
    """γ of the norm-growth limiter; None disables it."""
    min_numel: int = 4096
    """Matrices with fewer elements use plain AdamW (their state is tiny anyway)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise ValueError(f"rank must be an integer >= 1, got {self.rank!r}")
        if not self.scale > 0:
            raise ValueError(f"scale must be > 0, got {self.scale!r}")
        if self.scale_type not in ("channel", "tensor"):
            raise ValueError(f"scale_type must be 'channel' or 'tensor', got {self.scale_type!r}")
        if isinstance(self.update_proj_gap, bool) or not isinstance(self.update_proj_gap, int) or self.update_proj_gap < 1:
            raise ValueError(f"update_proj_gap must be an integer >= 1, got {self.update_proj_gap!r}")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {self.seed!r}")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas}")
        if not self.eps >= 0:
            raise ValueError(f"eps must be >= 0, got {self.eps!r}")
        if self.norm_growth_limit is not None and not self.norm_growth_limit > 0:
            raise ValueError(f"norm_growth_limit must be > 0 or None, got {self.norm_growth_limit!r}")
        if not isinstance(self.min_numel, int) or self.min_numel < 0:
            raise ValueError(f"min_numel must be an integer >= 0, got {self.min_numel!r}")


_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(ApolloConfig))

APOLLO = ApolloConfig()
"""Paper defaults for APOLLO: rank 256, channel-wise scaling, α = 1."""
APOLLO_MINI = ApolloConfig(rank=1, scale=math.sqrt(128), scale_type="tensor")
"""Paper defaults for APOLLO-Mini: rank 1, tensor-wise scaling, α = √128."""


def projection_seed(seed: int, index: int, refresh: int) -> int:
    """Seed of the projection of the ``index``-th parameter after ``refresh`` refreshes.

    ``seed + 1_000_003·index + refresh``: base seed plus a per-parameter offset plus the
    refresh count, spread so that no two (index, refresh) pairs collide.
    """
    return (seed + _SEED_STRIDE * index + refresh) % (2**63)


def make_projection(seed: int, rank: int, dim: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """The r×dim Gaussian projection with N(0, 1/r) entries drawn from a private generator."""
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    return torch.randn(rank, dim, generator=gen, device=device, dtype=torch.float32).mul_(rank**-0.5)


class Apollo(torch.optim.Optimizer):
    """APOLLO / APOLLO-Mini with an AdamW fallback for tensors it does not project.

    ``Apollo(params, lr, weight_decay, config=ApolloConfig(...), **overrides)``; every
    :class:`ApolloConfig` field can also be overridden per parameter group.
    """

    def __init__(self, params, lr: float = 1e-3, weight_decay: float = 0.0, *,
                 config: ApolloConfig | None = None, **overrides: Any) -> None:
        if not lr >= 0:
            raise ValueError(f"lr must be >= 0, got {lr!r}")
        if not weight_decay >= 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}")
        config = replace(config or APOLLO, **overrides)
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay, **asdict(config)})

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        cfg = ApolloConfig(**{k: group[k] for k in _FIELDS})  # validates per-group overrides
        group["betas"] = cfg.betas

    # -- which tensors are projected ------------------------------------------------

    @staticmethod
    def _projects(p: torch.Tensor, group: dict[str, Any]) -> bool:
        return p.ndim == 2 and group["rank"] < min(p.shape) and p.numel() >= group["min_numel"]

    def _index_of(self, param: torch.Tensor) -> tuple[int, dict[str, Any]]:
        index = 0
        for group in self.param_groups:
            for p in group["params"]:
                if p is param:
                    return index, group
                index += 1
        raise KeyError("parameter is not managed by this optimizer")

    @staticmethod
    def _projection_for(group: dict[str, Any], index: int, step: int, dim: int, device) -> torch.Tensor:
        refresh = (step - 1) // group["update_proj_gap"]
        return make_projection(projection_seed(group["seed"], index, refresh), group["rank"], dim, device)

    def projection(self, param: torch.Tensor) -> torch.Tensor | None:
        """The projection P used at ``param``'s latest step (None if it is not projected or not stepped yet)."""
        index, group = self._index_of(param)
        state = self.state.get(param, {})
        if not self._projects(param, group) or not state.get("step"):
            return None
        return self._projection_for(group, index, state["step"], min(param.shape), param.device)

    # -- the step -------------------------------------------------------------------

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        index = -1
        for group in self.param_groups:
            for p in group["params"]:
                index += 1
                if p.grad is None or not p.requires_grad:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("Apollo does not support sparse gradients")
                if self._projects(p, group):
                    self._apollo_step(p, group, self.state[p], index)
                else:
                    self._adamw_step(p, group, self.state[p])
        return loss

    @staticmethod
    def _decay(p: torch.Tensor, group: dict[str, Any]) -> None:
        if group["weight_decay"]:
            p.mul_(1.0 - group["lr"] * group["weight_decay"])

    def _apollo_step(self, p: torch.Tensor, group: dict[str, Any], state: dict[str, Any], index: int) -> None:
        grad = p.grad.float()
        transposed = grad.shape[0] > grad.shape[1]
        if transposed:
            grad = grad.t()  # now k×N with k = min(m, n): channels are columns
        k, n_channels = grad.shape
        rank = group["rank"]
        if not state:
            state["step"] = 0
            state["exp_avg"] = torch.zeros(rank, n_channels, dtype=torch.float32, device=p.device)
            state["exp_avg_sq"] = torch.zeros(rank, n_channels, dtype=torch.float32, device=p.device)
            state["prev_norm"] = torch.zeros((), dtype=torch.float32, device=p.device)
        state["step"] += 1
        step = state["step"]
        beta1, beta2 = group["betas"]

        proj = self._projection_for(group, index, step, k, p.device)
        r = proj @ grad
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        exp_avg.mul_(beta1).add_(r, alpha=1.0 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(r, r, value=1.0 - beta2)
        r_tilde = (exp_avg / (1.0 - beta1**step)) / ((exp_avg_sq / (1.0 - beta2**step)).sqrt() + group["eps"])

        tiny = torch.finfo(torch.float32).tiny
        if group["scale_type"] == "channel":
            num, den = r_tilde.norm(dim=0), r.norm(dim=0)
        else:
            num, den = r_tilde.norm(), r.norm()
        factor = torch.where(den > 0, num / den.clamp_min(tiny), torch.zeros_like(num)) * group["scale"]

        gamma = group["norm_growth_limit"]
        if gamma is not None:
            # ‖α·G·diag(s)‖ from the column norms of G, without materialising the update.
            norm = (grad.norm(dim=0) * factor).norm() if factor.ndim else grad.norm() * factor
            prev = state["prev_norm"]
            limit = gamma * prev
            shrink = torch.where((prev > 0) & (norm > limit), limit / norm.clamp_min(tiny), torch.ones_like(norm))
            factor = factor * shrink
            prev.copy_(norm * shrink)

        self._decay(p, group)
        target = p.t() if transposed else p  # a view: updating it updates p
        if p.dtype == torch.float32:
            target.addcmul_(grad, factor, value=-group["lr"])  # W -= lr·α·G·diag(s), in one pass
        else:
            target.add_((grad * factor).to(p.dtype), alpha=-group["lr"])

    def _adamw_step(self, p: torch.Tensor, group: dict[str, Any], state: dict[str, Any]) -> None:
        grad = p.grad.float()
        if not state:
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(p, dtype=torch.float32, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, dtype=torch.float32, memory_format=torch.preserve_format)
        state["step"] += 1
        step = state["step"]
        beta1, beta2 = group["betas"]
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        exp_avg.mul_(beta1).add_(grad, alpha=1.0 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
        step_size = group["lr"] / (1.0 - beta1**step)
        denom = (exp_avg_sq.sqrt() / math.sqrt(1.0 - beta2**step)).add_(group["eps"])
        self._decay(p, group)
        if p.dtype == torch.float32:
            p.addcdiv_(exp_avg, denom, value=-step_size)
        else:
            p.add_((exp_avg / denom).mul_(-step_size).to(p.dtype))

    # -- checkpoints ----------------------------------------------------------------

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """As torch's, but keeps the saved state dtypes (float32) instead of casting to the parameter dtype."""
        super().load_state_dict(state_dict)
        saved_ids = chain.from_iterable(g["params"] for g in state_dict["param_groups"])
        params = chain.from_iterable(g["params"] for g in self.param_groups)
        for saved_id, p in zip(saved_ids, params):
            saved = state_dict["state"].get(saved_id)
            if not saved:
                continue
            for key, value in saved.items():
                if isinstance(value, torch.Tensor):
                    self.state[p][key] = value.detach().to(device=p.device, copy=True)
