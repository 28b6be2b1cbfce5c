"""Natural gradient, made tractable: K-FAC on the empirical Fisher for ``nn.Linear`` layers.

The natural gradient (Amari 1998) preconditions the gradient ``g`` of the loss with the
Fisher information of the model's predictive distribution, ``d = (F + λI)⁻¹ g``. The kernel
seed calls this "Fisher-Rao natural gradient"; the Fisher matrix is the metric tensor of the
Fisher-Rao geometry, and ``d`` is the steepest-descent direction under it. For P parameters F is
P×P, so slmlab approximates it, following K-FAC (Martens & Grosse 2015, arXiv:1503.05671).

**The approximation, precisely.** Take a Linear layer ``y = W·a (+ b)``. For one example with
loss ℓ, ``∇_W ℓ = g·aᵀ`` where ``g = ∂ℓ/∂y``; a trained bias is folded in by appending a 1 to
``a`` and the column ``b`` to ``W``. With row-major ``vec``, ``vec(g·aᵀ) = g ⊗ a``, so the layer's
block of the Fisher is ``E[(g gᵀ) ⊗ (a aᵀ)]``. K-FAC makes two approximations:

1. *block-diagonal*: cross-layer blocks of F are dropped; each layer is preconditioned alone;
2. *Kronecker*: ``E[g gᵀ ⊗ a aᵀ] ≈ E[g gᵀ] ⊗ E[a aᵀ] = G ⊗ A``.

Then ``(G ⊗ A)⁻¹ vec(V) = vec(G⁻¹ V A⁻¹)``: two small inverses (d_out² and d_in²) instead of
one (d_out·d_in)². Per Linear layer and step, from forward/backward hooks on the layer::

    rows  R = every row of the layer's input this step (batch × positions, all micro-batches)
    A_t   = (1/R) Σ_rows a aᵀ                 from the inputs a (with a trailing 1 if biased)
    G_t   =  R    Σ_rows o oᵀ                 from o = ∂L/∂y, L the step's loss
    A ← β·A + (1-β)·A_t,  G ← β·G + (1-β)·G_t  (β = factor_decay; the first step takes A_t, G_t)
    every inv_every steps:  A = Q_A diag(α) Q_Aᵀ,  G = Q_G diag(γ) Q_Gᵀ   (eigh, eigenvalues ≥ 0)
    V  = [∇W | ∇b]                            the gradient after the step's clipping
    Δ  = Q_G [(Q_Gᵀ V Q_A) / (γ αᵀ + λ)] Q_Aᵀ  = (G ⊗ A + λI)⁻¹ vec(V)   exactly
    ν  = min(1, √(κ / (lr² Σ_layers ⟨Δ, V⟩)))  KL clipping (Ba et al. 2017), κ = kl_clip
    B ← μ·B + ν·Δ;   W ← W·(1 - lr·wd) - lr·B  (momentum, decoupled weight decay)

If L is the mean over the R rows of per-row losses ℓ_r, then ``o_r = (1/R)·∂ℓ_r/∂y_r`` and
``G_t = (1/R) Σ (∂ℓ_r/∂y_r)(∂ℓ_r/∂y_r)ᵀ``: both factors are per-row averages. Each sequence
position counts as one example ("K-FAC-expand", Eschenhagen et al. 2023, arXiv:2311.00636).

**Damping.** λ is applied to the Kronecker product itself, ``(G ⊗ A + λI)⁻¹``, which the
eigenbases give exactly and cheaply. The common alternative, ``(G + √λI)⁻¹ V (A + √λI)⁻¹``, is the
inverse of ``G⊗A + √λ(G⊗I + I⊗A) + λI``: extra damping that depends on the factors, plus a
heuristic π to balance it. With exact damping λ means the same thing here as in
:func:`exact_natural_gradient`, so for one example on one layer (below) the two agree to
rounding. Cost: two ``eigh`` per layer every ``inv_every`` steps (an inverse's O(d³), a larger
constant) and four matmuls per step instead of two.

**Which Fisher.** The *empirical* Fisher: ``g`` is the gradient of the loss at the observed
labels, captured from the training backward, so the curvature costs no extra pass. The true
Fisher samples labels from the model and needs a second backward that ``train_step`` does not
do. The two differ — the empirical Fisher is an outer product of gradients, and far from an
optimum it can be a poor curvature model (Kunstner et al. 2019, arXiv:1905.12558). Treat this
optimizer as "K-FAC-preconditioned gradient descent under the empirical Fisher".

**Where it differs from the exact (damped) natural gradient**, honestly:

* with more than one example per step, ``E[ggᵀ⊗aaᵀ] ≠ E[ggᵀ]⊗E[aaᵀ]`` unless a and g are
  uncorrelated; tests/test_optim_kernel.py shows the gap on a small batch;
* cross-layer curvature is ignored (exact only per block);
* positions in a sequence are treated as independent examples, although attention couples them;
* the factors are running averages over steps while W moves, and the eigenbases are up to
  ``inv_every - 1`` steps stale;
* slmlab's SFT loss is the mean over *supervised* tokens N ≤ R (padding and prompt rows count
  in R), so G comes out R/N times too large — the same as damping G's side R/N times less;
* ``train_step`` clips the gradient before the step; the factors see the unclipped ``o``.

When K-FAC is exact: one example (one row), one Linear layer, or per layer with the
block-diagonal exact Fisher — then ``g gᵀ ⊗ a aᵀ`` *is* the layer's empirical Fisher and Δ equals
``(F + λI)⁻¹ g``. The tests pin that identity and the general ``Δ = (G⊗A + λI)⁻¹ vec(V)``.

**Coverage and fallback.** K-FAC covers every ``nn.Linear`` of the model whose weight is in
the optimizer's parameters, is not shared with another module (a tied output head is also the
embedding table, whose gradient the head's factors do not describe), and has
``max(d_out, d_in + 1) ≤ max_dim`` (a 49k-vocabulary head would need a 49k² factor). LoRA's
``lora_A``/``lora_B`` are ``nn.Linear`` and are covered. Everything else — embeddings, norm
weights, unmatched biases, oversized layers — gets Adam (β = (0.9, 0.999), ε = 1e-8, decoupled
weight decay) at ``fallback_lr`` (default: ``lr``; set it, because a natural-gradient ``lr`` of
0.01–0.1 is far too large for Adam).

**Hooks.** The constructor registers a forward hook on each covered layer; while gradients are
enabled it attaches a hook to the layer's output that, during backward, adds ``aᵀa``, ``oᵀo`` and
the row count to pending sums. ``step`` consumes them; ``zero_grad`` drops them (a skipped step
leaves no curvature behind). Every backward through the model counts, including
:func:`exact_natural_gradient`'s. The hooks hold the optimizer weakly (a dropped optimizer's
hooks do nothing); :meth:`KFAC.remove_hooks` removes them.
Under several processes the per-step factors are averaged across ranks so replicas stay equal
(written, not yet tested under DDP). Gradient checkpointing re-runs forwards and is not supported.

**State** per covered weight: ``step``, ``A``, ``G`` (running factors), ``QA``, ``dA``, ``QG``,
``dG`` (the eigendecompositions in use), ``momentum_buffer``; per covered bias its
``momentum_buffer``; per fallback tensor Adam's ``step``, ``exp_avg``, ``exp_avg_sq``. Factors are
float32 (float64 for float64 weights) and :meth:`KFAC.load_state_dict` keeps them so; a resume
continues bit-exactly.
"""

from __future__ import annotations

import functools
import math
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from itertools import chain
from typing import Any

import torch


@dataclass(frozen=True)
class NaturalGradientConfig:
    """Extra arguments of ``natural-gradient`` (``lr`` and ``weight_decay`` are passed separately)."""

    damping: float = 1e-2
    """λ in (G ⊗ A + λI)⁻¹, in the units of the factors' eigenvalue products (problem-dependent)."""
    momentum: float = 0.9
    factor_decay: float = 0.95
    """β of the running averages of A and G."""
    inv_every: int = 10
    """Steps between eigendecompositions of the factors."""
    kl_clip: float | None = 1e-3
    """κ: caps lr²·⟨Δ, g⟩ summed over layers; None disables it."""
    max_dim: int = 4096
    """Layers with a factor larger than max_dim × max_dim fall back to Adam."""
    fallback_lr: float | None = None
    """Adam's rate for what K-FAC does not cover; None: the same as lr."""

    def __post_init__(self) -> None:
        if not self.damping > 0:
            raise ValueError(f"damping must be > 0, got {self.damping!r}")
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum!r}")
        if not 0.0 <= self.factor_decay < 1.0:
            raise ValueError(f"factor_decay must be in [0, 1), got {self.factor_decay!r}")
        if isinstance(self.inv_every, bool) or not isinstance(self.inv_every, int) or self.inv_every < 1:
            raise ValueError(f"inv_every must be an integer >= 1, got {self.inv_every!r}")
        if self.kl_clip is not None and not self.kl_clip > 0:
            raise ValueError(f"kl_clip must be > 0 or None, got {self.kl_clip!r}")
        if isinstance(self.max_dim, bool) or not isinstance(self.max_dim, int) or self.max_dim < 1:
            raise ValueError(f"max_dim must be an integer >= 1, got {self.max_dim!r}")
        if self.fallback_lr is not None and not self.fallback_lr >= 0:
            raise ValueError(f"fallback_lr must be >= 0 or None, got {self.fallback_lr!r}")


@dataclass
class _Layer:
    module: torch.nn.Linear
    weight: torch.Tensor
    bias: torch.Tensor | None  # only when the bias is optimised too
    name: str


def _factor_dtype(p: torch.Tensor) -> torch.dtype:
    return torch.float64 if p.dtype == torch.float64 else torch.float32


class KFAC(torch.optim.Optimizer):
    """K-FAC natural gradient for ``model``'s Linear layers, Adam for the rest (see the module docstring).

    ``KFAC(params, model, lr=..., weight_decay=..., config=NaturalGradientConfig(...))``. ``params``
    is a flat iterable of tensors (or (name, tensor) pairs); the param groups are built here:
    ``kind == "kfac"`` (covered weights and biases) and ``kind == "adam"`` (the fallback).
    """

    def __init__(self, params, model: torch.nn.Module, lr: float = 1e-2, weight_decay: float = 0.0, *,
                 config: NaturalGradientConfig | None = None) -> None:
        config = config or NaturalGradientConfig()
        if not lr >= 0:
            raise ValueError(f"lr must be >= 0, got {lr!r}")
        if not weight_decay >= 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}")
        tensors = []
        for item in params:
            if isinstance(item, dict):
                raise TypeError("natural-gradient takes a flat list of parameters, not param groups "
                                 "(it builds its own: K-FAC layers and the Adam fallback)")
            tensors.append(item[1] if isinstance(item, tuple) else item)
        self.config = config
        self._layers = self._find_layers(model, tensors, config.max_dim)
        covered = {id(t) for layer in self._layers for t in (layer.weight, layer.bias) if t is not None}
        kfac_params = [t for layer in self._layers for t in (layer.weight, layer.bias) if t is not None]
        rest = [p for p in tensors if id(p) not in covered]
        groups = []
        if kfac_params:
            groups.append({"params": kfac_params, "kind": "kfac", "lr": lr})
        if rest:
            groups.append({"params": rest, "kind": "adam", "lr": lr if config.fallback_lr is None else config.fallback_lr})
        super().__init__(groups, {"lr": lr, "weight_decay": weight_decay})
        self._pending: dict[torch.nn.Module, list] = {}
        self._by_module = {id(layer.module): layer for layer in self._layers}
        hook = functools.partial(_forward_hook, weakref.ref(self))  # a dropped optimizer is not kept alive
        self._handles = [layer.module.register_forward_hook(hook) for layer in self._layers]

    @staticmethod
    def _find_layers(model: torch.nn.Module, tensors: list[torch.Tensor], max_dim: int) -> list[_Layer]:
        wanted = {id(p) for p in tensors}
        uses: dict[int, int] = {}
        for _, p in model.named_parameters(remove_duplicate=False):
            uses[id(p)] = uses.get(id(p), 0) + 1
        layers = []
        for name, m in model.named_modules():
            if not isinstance(m, torch.nn.Linear) or id(m.weight) not in wanted or uses[id(m.weight)] > 1:
                continue
            bias = m.bias if m.bias is not None and id(m.bias) in wanted and uses[id(m.bias)] == 1 else None
            if max(m.out_features, m.in_features + (bias is not None)) > max_dim:
                continue
            layers.append(_Layer(m, m.weight, bias, name))
        return layers

    @property
    def covered(self) -> list[str]:
        """Module names of the Linear layers K-FAC preconditions."""
        return [layer.name for layer in self._layers]

    def remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    # -- curvature capture --------------------------------------------------------------

    def _on_forward(self, module: torch.nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        # id check: a deep copy of the model carries the hooks but not this optimizer's layers.
        if torch.is_grad_enabled() and output.requires_grad and id(module) in self._by_module:
            output.register_hook(functools.partial(self._on_backward, module, inputs[0].detach()))

    @torch.no_grad()
    def _on_backward(self, module: torch.nn.Module, a: torch.Tensor, o: torch.Tensor) -> None:
        layer = self._by_module[id(module)]
        dtype = _factor_dtype(layer.weight)
        a = a.reshape(-1, a.shape[-1]).to(dtype)
        if layer.bias is not None:
            a = torch.cat([a, a.new_ones(a.shape[0], 1)], dim=1)
        o = o.reshape(-1, o.shape[-1]).to(dtype)
        pending = self._pending.get(module)
        if pending is None:
            self._pending[module] = [a.T @ a, o.T @ o, a.shape[0]]
        else:
            pending[0].addmm_(a.T, a)
            pending[1].addmm_(o.T, o)
            pending[2] += a.shape[0]

    def zero_grad(self, set_to_none: bool = True) -> None:
        super().zero_grad(set_to_none)
        self._pending.clear()

    # -- the step -----------------------------------------------------------------------

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            if group["kind"] == "kfac":
                self._kfac_step(group)
            else:
                for p in group["params"]:
                    if p.grad is not None:
                        self._adam_step(p, group, self.state[p])
        self._pending.clear()
        return loss

    def _update_factors(self, layer: _Layer, state: dict[str, Any]) -> None:
        pending = self._pending.get(layer.module)
        if pending is None:
            if "A" not in state:
                raise RuntimeError(f"natural-gradient: layer {layer.name!r} has a gradient but no curvature statistics; "
                                   "was it computed by a backward through the model the optimizer hooks?")
            return
        a_sum, o_sum, rows = pending
        a_batch, g_batch = a_sum / rows, o_sum * rows
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            world = torch.distributed.get_world_size()
            if world > 1:  # keep the replicas' preconditioners identical
                for t in (a_batch, g_batch):
                    torch.distributed.all_reduce(t)
                    t.div_(world)
        if "A" not in state:
            state["A"], state["G"] = a_batch, g_batch
        else:
            beta = self.config.factor_decay
            state["A"].mul_(beta).add_(a_batch, alpha=1 - beta)
            state["G"].mul_(beta).add_(g_batch, alpha=1 - beta)

    def _kfac_step(self, group: dict[str, Any]) -> None:
        lam, lr = self.config.damping, group["lr"]
        directions = []  # (layer, Δ, V)
        for layer in self._layers:
            if layer.weight.grad is None:
                continue
            state = self.state[layer.weight]
            self._update_factors(layer, state)
            state["step"] = state.get("step", 0) + 1
            if (state["step"] - 1) % self.config.inv_every == 0:
                for f in ("A", "G"):
                    values, vectors = torch.linalg.eigh(state[f])
                    state["d" + f], state["Q" + f] = values.clamp_min_(0.0), vectors
            dtype = state["A"].dtype
            v = layer.weight.grad.to(dtype)
            if layer.bias is not None:
                bias_grad = layer.bias.grad if layer.bias.grad is not None else torch.zeros_like(layer.bias)
                v = torch.cat([v, bias_grad.to(dtype)[:, None]], dim=1)
            qa, qg = state["QA"], state["QG"]
            rotated = qg.T @ v @ qa
            rotated /= torch.outer(state["dG"], state["dA"]).add_(lam)
            directions.append((layer, qg @ rotated @ qa.T, v))
        if not directions:
            return
        nu = 1.0
        if self.config.kl_clip is not None and lr > 0:
            vg = float(sum((d * v).sum() for _, d, v in directions))
            if vg > 0:
                nu = min(1.0, math.sqrt(self.config.kl_clip / (lr * lr * vg)))
        for layer, d, _ in directions:
            parts = [(layer.weight, d[:, :layer.weight.shape[1]])]
            if layer.bias is not None:
                parts.append((layer.bias, d[:, -1]))
            for p, delta in parts:
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(delta)
                buf = state["momentum_buffer"]
                buf.mul_(self.config.momentum).add_(delta, alpha=nu)
                if group["weight_decay"]:
                    p.mul_(1.0 - lr * group["weight_decay"])
                p.add_(buf.to(p.dtype), alpha=-lr)

    @staticmethod
    def _adam_step(p: torch.Tensor, group: dict[str, Any], state: dict[str, Any]) -> None:
        beta1, beta2, eps = 0.9, 0.999, 1e-8
        grad = p.grad.to(_factor_dtype(p))
        if not state:
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(grad)
            state["exp_avg_sq"] = torch.zeros_like(grad)
        state["step"] += 1
        step = state["step"]
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        exp_avg.mul_(beta1).add_(grad, alpha=1.0 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
        denom = (exp_avg_sq.sqrt() / math.sqrt(1.0 - beta2**step)).add_(eps)
        if group["weight_decay"]:
            p.mul_(1.0 - group["lr"] * group["weight_decay"])
        p.add_((exp_avg / denom).mul_(-group["lr"] / (1.0 - beta1**step)).to(p.dtype))

    # -- checkpoints --------------------------------------------------------------------

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """As torch's, but keeps the saved state dtypes (float32 factors) instead of casting to the parameter dtype."""
        super().load_state_dict(state_dict)
        self._pending.clear()
        saved_ids = chain.from_iterable(g["params"] for g in state_dict["param_groups"])
        params = chain.from_iterable(g["params"] for g in self.param_groups)
        for saved_id, p in zip(saved_ids, params):
            for key, value in state_dict["state"].get(saved_id, {}).items():
                if isinstance(value, torch.Tensor):
                    self.state[p][key] = value.detach().to(device=p.device, copy=True)


def _forward_hook(ref: weakref.ref, module: torch.nn.Module, inputs: tuple, output: torch.Tensor) -> None:
    optimizer = ref()
    if optimizer is not None:
        optimizer._on_forward(module, inputs, output)


def build_natural_gradient(params, lr: float, weight_decay: float, config: NaturalGradientConfig,
                           model: torch.nn.Module | None = None) -> KFAC:
    from slmlab.errors import SlmlabError

    if model is None:
        raise SlmlabError("optimizer 'natural-gradient' needs the model, to hook its Linear layers: "
                          "build_optimizer('natural-gradient', params, ..., model=model).")
    return KFAC(params, model, lr=lr, weight_decay=weight_decay, config=config)


# -- the exact reference ----------------------------------------------------------------


def exact_natural_gradient(model: torch.nn.Module, loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                           batch: tuple[torch.Tensor, torch.Tensor], damping: float,
                           params: list[torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """``(F + λI)⁻¹ g`` with the full empirical Fisher, for models small enough to form F (P ≲ a few thousand).

    ``batch = (inputs, targets)``; example i's loss is ``loss_fn(model(inputs[i:i+1]), targets[i:i+1])``
    (``loss_fn`` mean-reduced, the model free of cross-example layers such as batch norm), its
    gradient ``g_i`` over ``params`` (default: every parameter that requires grad), flattened
    parameter by parameter. Then ``g = (1/n) Σ g_i`` (the gradient of the batch's mean loss) and
    ``F = (1/n) Σ g_i g_iᵀ`` — the *empirical* Fisher, the one :class:`KFAC` approximates.
    Passing one layer's parameters as ``params`` gives that layer's diagonal block of F, which is
    what K-FAC's block-diagonal approximation keeps. Returns ``{name: direction}`` shaped like
    the parameters, in float64. The backward passes here reach any K-FAC hooks on the model:
    call the optimizer's ``zero_grad()`` afterwards.
    """
    inputs, targets = batch
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if params is not None:
        chosen = {id(p) for p in params}
        named = [(n, p) for n, p in named if id(p) in chosen]
    tensors = [p for _, p in named]
    rows = []
    for i in range(inputs.shape[0]):
        loss = loss_fn(model(inputs[i:i + 1]), targets[i:i + 1])
        grads = torch.autograd.grad(loss, tensors)
        rows.append(torch.cat([g.reshape(-1) for g in grads]).double())
    jac = torch.stack(rows)  # n × P per-example gradients
    fisher = jac.T @ jac / jac.shape[0]
    direction = torch.linalg.solve(fisher + damping * torch.eye(fisher.shape[0], dtype=fisher.dtype), jac.mean(0))
    out, offset = {}, 0
    for name, p in named:
        out[name] = direction[offset:offset + p.numel()].reshape(p.shape)
        offset += p.numel()
    return out
