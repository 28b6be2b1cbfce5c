"""Muon for hidden matrices, AdamW for everything else: one optimizer object.

Muon (Jordan et al. 2024, https://kellerjordan.github.io/posts/muon/; Liu et al., "Muon is
Scalable for LLM Training", arXiv:2502.16982) is :class:`torch.optim.Muon` here (torch >= 2.9);
slmlab adds only the split and the wrapper. For a 2-D parameter ``W`` (m×n) with gradient ``G``,
as ``torch.optim.Muon`` computes it::

    B  ← μ·B + (1-μ)·G                        momentum as an EMA (``lerp``)
    U  = (1-μ)·G + μ·B   (nesterov)  or  B    the direction fed to the orthogonaliser
    O  = NS₅(U / ‖U‖_F)                       5 Newton-Schulz steps, quintic (a, b, c) =
                                              (3.4445, -4.7750, 2.0315), in bfloat16
                                              (float32 on a CPU: ``ns_dtype``):
                                              O ≈ U·(UᵀU)^(-1/2), singular values squashed
                                              into roughly [0.7, 1.2] rather than exactly 1
    W  ← W·(1 - lr·λ)                         decoupled weight decay (with the unadjusted lr)
    W  ← W - lr'·O                            lr' = lr·√max(1, m/n)       ("original")
                                                 or lr·0.2·√max(m, n)     ("match_rms_adamw")

(torch's docstring writes the momentum as ``B ← μB + G``; its code uses the EMA above. The two
differ by a scalar, which the Frobenius normalisation before Newton-Schulz removes.)

**The split.** Muon is meant for the hidden layers' weight matrices only. Every parameter the
optimizer receives goes to exactly one of the two inner optimizers:

* AdamW, if it is not 2-D (norm weights, biases, anything 1-D or >2-D);
* AdamW, if its name contains ``embed`` or ``lm_head`` (input embeddings, the output head,
  PEFT's ``lora_embedding_A/B``), or — when the model is given — it is the weight of an
  ``nn.Embedding`` or of ``model.get_output_embeddings()``. Embeddings are lookup tables, not
  linear maps of a hidden state, and the output head is where Muon's authors found AdamW better;
* Muon otherwise (attention and MLP projections).

Names come from ``(name, parameter)`` pairs if the caller passes them, else from
``model.named_parameters()`` (``build_optimizer(..., model=model)``, which
:func:`slmlab.train.state.new_state` passes). With neither, the embeddings and the head cannot be
told from hidden matrices: the split falls back to shape alone and warns. Tied weights appear
once in ``model.parameters()`` under the embedding's name, so they get AdamW.

**LoRA.** With an adapter only the LoRA matrices are trainable, and they are 2-D, so Muon
orthogonalises A (r×d_in) and B (d_out×r) separately. That is allowed and runs, but it is not what
Muon was designed for: the orthogonalised update of a rank-r factor is not the orthogonalised
update of the product B·A, and B starts at zero, so A's first gradients are zero (Newton-Schulz
of a zero matrix is zero). Use Muon for full fine-tuning or training from scratch.

**Defaults.** ``adjust_lr_fn="match_rms_adamw"`` (torch's default is "original"): with it
Muon's update has about AdamW's RMS, so one ``lr`` tuned for AdamW serves both halves and
``adamw_lr`` can stay None (= ``lr``). For Keller Jordan's setting use
``adjust_lr_fn="original"``, ``lr≈0.02``, ``adamw_lr≈3e-4``. ``weight_decay`` applies to both
halves. The LR schedule scales every group by the same factor, so the ratio ``adamw_lr/lr``
holds throughout.

**State** (round-trips through ``state_dict`` bit-exactly): Muon's ``momentum_buffer`` per
matrix; AdamW's ``step``, ``exp_avg``, ``exp_avg_sq`` per other tensor. The param groups carry
``"kind": "muon" | "adamw"`` and, when names are known, ``param_names``, so a checkpoint says
which parameter got which update.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass
from typing import Any

import torch

from slmlab.errors import SlmlabError

NS_DTYPES = ("auto", "bfloat16", "float32")
ADAMW_NAME_PARTS = ("embed", "lm_head")
"""A parameter whose name contains one of these goes to AdamW, whatever its shape."""


@dataclass(frozen=True)
class MuonConfig:
    """Extra arguments of ``muon`` (``lr``, the rate of the Muon matrices, and ``weight_decay`` are passed separately)."""

    adamw_lr: float | None = None
    """Rate of the AdamW half (embeddings, head, 1-D tensors); None: the same as ``lr``."""
    momentum: float = 0.95
    nesterov: bool = True
    ns_steps: int = 5
    """Newton-Schulz iterations."""
    adjust_lr_fn: str = "match_rms_adamw"
    """'match_rms_adamw' (lr' = 0.2·lr·√max(m, n)) or 'original' (lr' = lr·√max(1, m/n))."""
    adamw_betas: tuple[float, float] = (0.9, 0.999)
    adamw_eps: float = 1e-8
    ns_dtype: str = "auto"
    """Newton-Schulz in 'bfloat16' (torch's choice, fast on GPUs), 'float32', or 'auto': float32 for
    parameters on the CPU (where bfloat16 matmuls are slow), bfloat16 elsewhere."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "adamw_betas", tuple(float(b) for b in self.adamw_betas))
        if self.adamw_lr is not None and not self.adamw_lr >= 0:
            raise ValueError(f"adamw_lr must be >= 0 or None, got {self.adamw_lr!r}")
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum!r}")
        if not isinstance(self.nesterov, bool):
            raise TypeError(f"nesterov must be true or false, got {self.nesterov!r}")
        if isinstance(self.ns_steps, bool) or not isinstance(self.ns_steps, int) or not 1 <= self.ns_steps < 100:
            raise ValueError(f"ns_steps must be an integer in [1, 99], got {self.ns_steps!r}")
        if self.adjust_lr_fn not in ("original", "match_rms_adamw"):
            raise ValueError(f"adjust_lr_fn must be 'original' or 'match_rms_adamw', got {self.adjust_lr_fn!r}")
        if len(self.adamw_betas) != 2 or not all(0.0 <= b < 1.0 for b in self.adamw_betas):
            raise ValueError(f"adamw_betas must be two numbers in [0, 1), got {self.adamw_betas}")
        if not self.adamw_eps >= 0:
            raise ValueError(f"adamw_eps must be >= 0, got {self.adamw_eps!r}")
        if self.ns_dtype not in NS_DTYPES:
            raise ValueError(f"ns_dtype must be one of {', '.join(NS_DTYPES)}, got {self.ns_dtype!r}")


def _named(params, model: torch.nn.Module | None) -> list[dict[str, Any]]:
    """Parameters, (name, parameter) pairs or param groups → groups whose params are (name | None, p) pairs."""
    items = list(params)
    groups = items if items and isinstance(items[0], dict) else [{"params": items}]
    names = {id(p): n for n, p in model.named_parameters()} if model is not None else {}
    out = []
    for group in groups:
        raw = [group["params"]] if isinstance(group["params"], torch.Tensor) else list(group["params"])
        pairs = [item if isinstance(item, tuple) else (names.get(id(item)), item) for item in raw]
        out.append({**group, "params": pairs})
    return out


def _adamw_tensors(model: torch.nn.Module | None) -> set[int]:
    """ids of the embedding tables and the output head of ``model`` (found by module type)."""
    if model is None:
        return set()
    ids = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None  # HF models only
    if head is not None:
        ids.add(id(head.weight))
    return ids


def uses_muon(name: str | None, p: torch.Tensor, adamw_ids: frozenset[int] | set[int] = frozenset()) -> bool:
    """The split: Muon for 2-D tensors that are neither an embedding nor the output head."""
    if p.ndim != 2 or id(p) in adamw_ids:
        return False
    return name is None or not any(part in name for part in ADAMW_NAME_PARTS)


class MuonAdamW(torch.optim.Optimizer):
    """One optimizer over a :class:`torch.optim.Muon` and a :class:`torch.optim.AdamW`.

    Both inner optimizers work on this object's own param-group dicts and share its ``state``,
    so ``param_groups`` (the LR schedule writes ``"lr"`` there), ``state_dict``,
    ``load_state_dict`` and ``zero_grad`` are torch's, unchanged. :attr:`split` says which
    parameter went where. Build it with :func:`build_muon` (or ``build_optimizer("muon", ...)``).
    """

    def __init__(self, muon_groups: list[dict[str, Any]], adamw_groups: list[dict[str, Any]], *,
                 muon_defaults: dict[str, Any], adamw_defaults: dict[str, Any], ns_dtype: str = "auto") -> None:
        self.ns_dtype = ns_dtype
        muon_groups = [{**g, "kind": "muon"} for g in muon_groups if g["params"]]
        adamw_groups = [{**g, "kind": "adamw"} for g in adamw_groups if g["params"]]
        if not muon_groups and not adamw_groups:
            raise ValueError("optimizer got an empty parameter list")
        self._muon = torch.optim.Muon(muon_groups, **muon_defaults) if muon_groups else None
        self._adamw = torch.optim.AdamW(adamw_groups, **adamw_defaults) if adamw_groups else None
        # The inner optimizers filled in their defaults; this object adopts the very same dicts.
        inner = [g for opt in (self._muon, self._adamw) if opt is not None for g in opt.param_groups]
        super().__init__(inner, {})
        self._link()

    def _link(self) -> None:
        """Point the inner optimizers at this object's groups and state (again after a load)."""
        for opt, kind in ((self._muon, "muon"), (self._adamw, "adamw")):
            if opt is not None:
                opt.param_groups = [g for g in self.param_groups if g["kind"] == kind]
                opt.state = self.state

    @property
    def split(self) -> dict[str, list[str]]:
        """Parameter names (or ``param<i>`` when unnamed) per inner optimizer: {"muon": [...], "adamw": [...]}."""
        out: dict[str, list[str]] = {"muon": [], "adamw": []}
        index = 0
        for group in self.param_groups:
            names = group.get("param_names") or [None] * len(group["params"])
            for name in names:
                out[group["kind"]].append(name or f"param{index}")
                index += 1
        return out

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self._muon is not None:
            with newton_schulz_in(self._ns_float32()):
                self._muon.step()
        if self._adamw is not None:
            self._adamw.step()
        return loss

    def _ns_float32(self) -> bool:
        if self.ns_dtype != "auto":
            return self.ns_dtype == "float32"
        return all(p.device.type == "cpu" for g in self._muon.param_groups for p in g["params"])

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)  # replaces self.param_groups' dicts and self.state
        self._link()


def build_muon(params, lr: float, weight_decay: float, config: MuonConfig,
               model: torch.nn.Module | None = None) -> MuonAdamW:
    """Split ``params`` (tensors, (name, tensor) pairs or param groups) and build :class:`MuonAdamW`.

    Keys of a param group other than ``params`` are copied to both of its halves, except that
    the AdamW half's ``lr`` is ``adamw_lr`` when that is set.
    """
    if not hasattr(torch.optim, "Muon"):  # torch < 2.9; users may bring their own torch
        raise SlmlabError(f"optimizer 'muon' needs torch.optim.Muon (torch >= 2.9); this is torch {torch.__version__}.")
    groups = _named(params, model)
    adamw_ids = _adamw_tensors(model)
    pairs = [pair for g in groups for pair in g["params"]]
    all_named = all(name is not None for name, _ in pairs)
    if not all_named and not adamw_ids:
        warnings.warn("muon: parameter names are unknown, so embeddings and the output head cannot be told from "
                      "hidden matrices and every 2-D tensor gets Muon. Pass model= to build_optimizer, or "
                      "(name, parameter) pairs.", stacklevel=3)
    muon_groups, adamw_groups = [], []
    for g in groups:
        extra = {k: v for k, v in g.items() if k != "params"}
        muon_part = [(n, p) for n, p in g["params"] if uses_muon(n, p, adamw_ids)]
        adamw_part = [(n, p) for n, p in g["params"] if not uses_muon(n, p, adamw_ids)]
        adamw_extra = {**extra, "lr": config.adamw_lr} if config.adamw_lr is not None else extra
        muon_groups.append({**extra, "params": _for_torch(muon_part, all_named)})
        adamw_groups.append({**adamw_extra, "params": _for_torch(adamw_part, all_named)})
    return MuonAdamW(
        muon_groups, adamw_groups,
        muon_defaults={"lr": lr, "weight_decay": weight_decay, "momentum": config.momentum,
                       "nesterov": config.nesterov, "ns_steps": config.ns_steps, "adjust_lr_fn": config.adjust_lr_fn},
        adamw_defaults={"lr": lr if config.adamw_lr is None else config.adamw_lr, "weight_decay": weight_decay,
                        "betas": config.adamw_betas, "eps": config.adamw_eps},
        ns_dtype=config.ns_dtype,
    )


def newton_schulz_float32(grad: torch.Tensor, ns_coefficients: tuple[float, float, float], ns_steps: int,
                          eps: float) -> torch.Tensor:
    """torch.optim.Muon's Newton-Schulz iteration, operation for operation, in float32 instead of bfloat16."""
    a, b, c = ns_coefficients
    x = grad.float()
    if grad.size(0) > grad.size(1):
        x = x.T
    x = x / x.norm().clamp(min=eps)
    for _ in range(ns_steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if grad.size(0) > grad.size(1) else x


@contextlib.contextmanager
def newton_schulz_in(float32: bool):
    """Within the block, torch.optim.Muon orthogonalises with :func:`newton_schulz_float32` (when
    ``float32``); torch's bfloat16 function is put back after it. torch.optim.Muon looks the function
    up in its module at each call, so this swaps nothing else. On a CPU it is ~25× faster for a
    96×256 matrix (bfloat16 matmuls have no fast CPU kernel) and more precise."""
    if not float32:
        yield
        return
    import torch.optim._muon as torch_muon

    original = torch_muon._zeropower_via_newtonschulz
    torch_muon._zeropower_via_newtonschulz = newton_schulz_float32
    try:
        yield
    finally:
        torch_muon._zeropower_via_newtonschulz = original


def _for_torch(pairs: list[tuple[str | None, torch.Tensor]], named: bool) -> list:
    """torch wants every group named or none: pairs when all names are known, bare tensors otherwise."""
    return [(n, p) for n, p in pairs] if named else [p for _, p in pairs]
