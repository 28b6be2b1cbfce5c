"""The constellation: K expert MLPs per layer, routed per token by E8 geometry, a learned gate, or not at all.

``ConstellationForCausalLM`` is transformers' ``LlamaForCausalLM`` with each decoder layer's MLP
replaced by a mixture of K SwiGLU experts of width ``expert_intermediate`` (``router`` "e8" or
"learned"), or kept as one SwiGLU MLP of width K · ``expert_intermediate`` (``router`` "dense": the
same parameters as the K experts). Importing this module registers ``model_type``
``slmlab_constellation`` with ``AutoConfig`` / ``AutoModelForCausalLM``, so ``save_pretrained`` /
``from_pretrained`` / :func:`slmlab.models.load` and with them ``slmlab train`` take it unchanged.

Routing is per **token** (standard for mixtures of experts; the learned gate and the E8 router
work at the same granularity). For the token's MLP input x (the output of the layer's
post-attention RMSNorm):

* ``e8`` — the basin coordinate b = softmax(P·(x/rms(x))/τ) (:func:`slmlab.kernel.routing.basin_coordinates`)
  with P a fixed (8, hidden) projection with orthonormal rows, seed ``router_seed + layer index``,
  stored in the checkpoint as the buffer ``projection`` and never trained. Expert k's prototype is
  softmax(rₖ/τ) of its E8 root rₖ (``prototypes`` "simple": the simple roots α₁…α_K, K ≤ 8;
  "roots": the first K of the 240 roots in :func:`slmlab.kernel.e8.roots` order), also a buffer.
  The token goes to the ``experts_per_token`` prototypes nearest in Fisher-Rao distance, weighted
  softmax(−d/τ_w) over those k. No parameter decides the route; the weights depend on x, so the
  loss's gradient reaches the earlier layers through them (and reaches only the selected experts).
* ``learned`` — a linear gate (hidden → K, no bias) and Mixtral's rule: softmax over the K logits,
  keep the top k, renormalise. Plus the Switch-Transformer balance loss
  α · K · Σₖ fₖ·Pₖ (fₖ: share of the step's token-slots sent to expert k, Pₖ: mean gate probability
  of expert k, over non-padding tokens), α = ``aux_loss_coef``. slmlab's loop calls the decoder and
  the head itself, never ``forward(labels=...)``, so the term cannot be added to a returned loss;
  it is added to the *gradient* inside the forward instead (:class:`AddAuxiliaryLoss`, DeepSeek-V2's
  device): every backward through a training forward receives ∂(α·L_aux) once per forward, whatever
  the caller does with the LM loss. The logged loss is the LM loss alone.
* ``dense`` — no routing.

Counts (persistent ``int64`` buffers, so they are saved with the model and restored on resume):
each mixture's ``expert_tokens`` [K] counts the token-slots sent to each expert (k per
non-padding token) in training mode; ``routing_joint`` [layers−1, K, K] counts, for each pair of
adjacent layers, the (top-1 expert at layer l, top-1 expert at layer l+1) of each token.
Padding (``attention_mask`` 0 where given, else ``input_ids == pad_token_id``) is not counted.
:func:`routing_stats` turns them into shares, entropy and κ; :func:`held_out_routing` measures
the same on given token ids without touching the training counts.

κ (kappa), as defined here: the routing coupling between adjacent layers — the normalised mutual
information I(A_l; A_{l+1}) / √(H(A_l)·H(A_{l+1})) between the top-1 experts of the same token at
layers l and l+1, averaged over the adjacent pairs where both entropies are positive. 0: a token's
expert at one layer says nothing about its expert at the next; 1: it determines it. It is a
statistic of routing, nothing more; it has no relation to the research notes' κ* ≈ 64.

Several processes (DDP): the counters are buffers, which DDP broadcasts from rank 0 at each
forward, so they hold rank 0's counts. Unselected experts get no gradient in a step, so DDP needs
``find_unused_parameters=True`` for the e8 and learned routers.
"""

from __future__ import annotations

import contextlib
import itertools
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    LlamaModel,
)
from transformers.activations import ACT2FN
from transformers.models.llama.modeling_llama import LlamaPreTrainedModel

from slmlab.errors import SlmlabError
from slmlab.kernel.e8 import RANK, prototype_roots
from slmlab.kernel.routing import (
    basin_coordinates,
    fixed_projection,
    prototypes_from_roots,
    route,
)

MODEL_TYPE = "slmlab_constellation"
ROUTERS = ("e8", "learned", "dense")
PROTOTYPES = ("simple", "roots")
BASIN_DIM = RANK  # E8 lives in 8 dimensions, so the basin space has 8


@strict
class ConstellationConfig(LlamaConfig):
    """``LlamaConfig`` plus the mixture's fields; ``intermediate_size`` is derived: n_experts · expert_intermediate."""

    model_type = MODEL_TYPE

    n_experts: int = 8
    router: str = "e8"
    experts_per_token: int = 2
    expert_intermediate: int = 64
    prototypes: str = "simple"
    basin_temperature: float = 1.0
    weight_temperature: float = 1.0
    router_seed: int = 0
    aux_loss_coef: float = 0.01

    def __post_init__(self, **kwargs):
        self.intermediate_size = self.n_experts * self.expert_intermediate
        super().__post_init__(**kwargs)

    def validate_architecture(self):
        """Part of ``@strict`` validation: every problem named by its field, raised together."""
        super().validate_architecture()
        problems = []
        if self.router not in ROUTERS:
            problems.append(f"router must be one of {', '.join(ROUTERS)}, got {self.router!r}")
        if self.n_experts < 1 or self.expert_intermediate < 1:
            problems.append(f"n_experts ({self.n_experts}) and expert_intermediate ({self.expert_intermediate}) "
                            "must be positive")
        elif not 1 <= self.experts_per_token <= self.n_experts:
            problems.append(f"experts_per_token must be between 1 and n_experts ({self.n_experts}), "
                            f"got {self.experts_per_token}")
        if self.prototypes not in PROTOTYPES:
            problems.append(f"prototypes must be one of {', '.join(PROTOTYPES)}, got {self.prototypes!r}")
        elif self.router == "e8" and self.n_experts > (8 if self.prototypes == "simple" else 240):
            most = 8 if self.prototypes == "simple" else 240
            problems.append(f"prototypes={self.prototypes!r} places at most {most} experts, got "
                            f"n_experts={self.n_experts} (use prototypes='roots' for up to 240)")
        if self.router == "e8" and self.hidden_size < BASIN_DIM:
            problems.append(f"the e8 router projects to {BASIN_DIM} dimensions: hidden_size must be >= {BASIN_DIM}")
        if min(self.basin_temperature, self.weight_temperature) <= 0 or self.aux_loss_coef < 0:
            problems.append("basin_temperature and weight_temperature must be > 0, aux_loss_coef >= 0")
        if problems:
            raise SlmlabError("constellation config: " + "; ".join(problems))


def make_config(**fields) -> ConstellationConfig:
    """``ConstellationConfig(**fields)`` with a validation failure raised as one SlmlabError naming the fields
    (transformers' strict configs wrap validator errors in their own exception)."""
    from huggingface_hub.errors import StrictDataclassClassValidationError

    try:
        return ConstellationConfig(**fields)
    except StrictDataclassClassValidationError as e:
        cause = e.__cause__
        raise (cause if isinstance(cause, SlmlabError) else SlmlabError(f"constellation config: {e}")) from None


class AddAuxiliaryLoss(torch.autograd.Function):
    """Returns ``x`` unchanged; its backward also sends gradient 1 into ``loss`` (a scalar), so
    ``loss`` joins whatever objective is backpropagated through ``x`` (as in DeepSeek-V2's code)."""

    @staticmethod
    def forward(ctx, x, loss):
        ctx.loss_dtype, ctx.needs = loss.dtype, loss.requires_grad
        return x

    @staticmethod
    def backward(ctx, grad_output):
        grad_loss = torch.ones((), dtype=ctx.loss_dtype, device=grad_output.device) if ctx.needs else None
        return grad_output, grad_loss


class Expert(nn.Module):
    """One SwiGLU MLP, exactly as ``LlamaMLP``, ``width`` wide."""

    def __init__(self, hidden: int, width: int, act: str):
        super().__init__()
        self.gate_proj = nn.Linear(hidden, width, bias=False)
        self.up_proj = nn.Linear(hidden, width, bias=False)
        self.down_proj = nn.Linear(width, hidden, bias=False)
        self.act_fn = ACT2FN[act]

    def forward(self, x):
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


@dataclass
class Routing:
    indices: torch.Tensor  # [tokens, k] expert ids, nearest / most probable first
    weights: torch.Tensor  # [tokens, k] summing to 1
    probs: torch.Tensor | None = None  # [tokens, K] the learned gate's softmax


class ExpertMixture(nn.Module):
    """A layer's K experts and its router (``e8`` or ``learned``); replaces the layer's MLP."""

    def __init__(self, config: ConstellationConfig, layer_idx: int):
        super().__init__()
        self.router, self.top_k, self.n_experts = config.router, config.experts_per_token, config.n_experts
        self.basin_temperature, self.weight_temperature = config.basin_temperature, config.weight_temperature
        self.aux_loss_coef = config.aux_loss_coef
        self.experts = nn.ModuleList(Expert(config.hidden_size, config.expert_intermediate, config.hidden_act)
                                     for _ in range(config.n_experts))
        if self.router == "learned":
            self.gate = nn.Linear(config.hidden_size, config.n_experts, bias=False)
        else:
            roots = prototype_roots(config.prototypes, config.n_experts)
            self.register_buffer("projection", fixed_projection(config.hidden_size, BASIN_DIM,
                                                                seed=config.router_seed + layer_idx))
            self.register_buffer("prototypes", prototypes_from_roots(roots, config.basin_temperature))
        self.register_buffer("expert_tokens", torch.zeros(config.n_experts, dtype=torch.long))
        # Transient, per forward: set by ConstellationModel (padding), read by it (adjacent-layer counts).
        self.token_mask: torch.Tensor | None = None
        self.last_top1: torch.Tensor | None = None
        self.recording = False  # count in eval mode too (held_out_routing)

    def route(self, x: torch.Tensor) -> Routing:
        """The routing of ``x`` [tokens, hidden]: deterministic, a function of ``x`` and the weights."""
        if self.router == "e8":
            basin = basin_coordinates(x, self.projection, self.basin_temperature)
            indices, weights, _ = route(basin, self.prototypes, self.top_k, self.weight_temperature)
            return Routing(indices, weights.to(x.dtype))
        probs = torch.softmax(self.gate(x).float(), dim=-1)
        top, indices = torch.topk(probs, self.top_k, dim=-1)
        return Routing(indices, (top / top.sum(-1, keepdim=True)).to(x.dtype), probs)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        shape = hidden_states.shape
        x = hidden_states.reshape(-1, shape[-1])
        r = self.route(x)
        out = torch.zeros_like(x)
        for e, expert in enumerate(self.experts):
            token, slot = torch.where(r.indices == e)
            if token.numel():  # an expert nobody chose is not called: it gets no gradient
                out.index_add_(0, token, expert(x[token]) * r.weights[token, slot].unsqueeze(-1))
        valid = self._valid(shape)
        if r.probs is not None and self.training and torch.is_grad_enabled() and self.aux_loss_coef > 0:
            out = AddAuxiliaryLoss.apply(out, self.aux_loss_coef * switch_balance_loss(r.probs, r.indices, valid))
        self._count(r.indices, valid)
        return out.reshape(shape)

    def _valid(self, shape) -> torch.Tensor | None:
        mask = self.token_mask
        return mask.reshape(-1) if mask is not None and mask.numel() * shape[-1] == math.prod(shape) else None

    @torch.no_grad()
    def _count(self, indices: torch.Tensor, valid: torch.Tensor | None) -> None:
        self.last_top1 = None
        if not (self.training or self.recording):
            return
        if valid is not None:
            indices = indices[valid]
        self.expert_tokens += torch.bincount(indices.reshape(-1), minlength=self.n_experts).to(self.expert_tokens)
        self.last_top1 = indices[:, 0]


def switch_balance_loss(probs: torch.Tensor, indices: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """K · Σₖ fₖ·Pₖ (Switch Transformer, with top-k slots): 1 when perfectly balanced, K when collapsed."""
    if valid is not None:
        probs, indices = probs[valid], indices[valid]
    if not len(probs):
        return probs.sum() * 0.0
    n = probs.shape[-1]
    share = torch.bincount(indices.reshape(-1), minlength=n).to(probs.dtype) / indices.numel()
    return n * (share * probs.mean(0)).sum()


class ConstellationModel(LlamaModel):
    """``LlamaModel`` whose MLPs are :class:`ExpertMixture` (unless ``router`` is dense)."""

    config_class = ConstellationConfig

    def __init__(self, config: ConstellationConfig):
        super().__init__(config)
        if config.router == "dense":  # LlamaMLP of width n_experts · expert_intermediate, as built
            return
        for i, layer in enumerate(self.layers):
            layer.mlp = ExpertMixture(config, i)
        if config.num_hidden_layers >= 2:
            k = config.n_experts
            self.register_buffer("routing_joint", torch.zeros(config.num_hidden_layers - 1, k, k, dtype=torch.long))

    def mixtures(self) -> list[ExpertMixture]:
        return [layer.mlp for layer in self.layers if isinstance(layer.mlp, ExpertMixture)]

    def forward(self, input_ids=None, attention_mask=None, **kwargs):
        blocks = self.mixtures()
        mask = token_mask(input_ids, attention_mask, self.config.pad_token_id)
        for block in blocks:
            block.token_mask = mask
        try:
            out = super().forward(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        finally:
            for block in blocks:
                block.token_mask = None
        self._count_adjacent(blocks)
        return out

    @torch.no_grad()
    def _count_adjacent(self, blocks: list[ExpertMixture]) -> None:
        tops = [b.last_top1 for b in blocks]
        for b in blocks:
            b.last_top1 = None
        if len(tops) < 2 or any(t is None for t in tops):
            return
        k = self.config.n_experts
        for layer, (a, b) in enumerate(itertools.pairwise(tops)):
            pairs = torch.bincount(a * k + b, minlength=k * k).view(k, k)
            self.routing_joint[layer] += pairs.to(self.routing_joint)


def token_mask(input_ids, attention_mask, pad_id) -> torch.Tensor | None:
    """Which positions are real tokens: the 2-D attention mask when it matches the ids, else ids != pad."""
    if input_ids is None:
        return None
    if attention_mask is not None and attention_mask.dim() == 2 and attention_mask.shape == input_ids.shape:
        return attention_mask.bool()
    return input_ids.ne(pad_id) if pad_id is not None else None


class ConstellationForCausalLM(LlamaForCausalLM):
    """``LlamaForCausalLM`` around a :class:`ConstellationModel` (tied embeddings as configured)."""

    config_class = ConstellationConfig

    def __init__(self, config: ConstellationConfig):
        LlamaPreTrainedModel.__init__(self, config)  # LlamaForCausalLM's own __init__ would build a LlamaModel
        self.model = ConstellationModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()


AutoConfig.register(MODEL_TYPE, ConstellationConfig, exist_ok=True)
AutoModelForCausalLM.register(ConstellationConfig, ConstellationForCausalLM, exist_ok=True)


# --------------------------------------------------------------------------- statistics


def mixtures(model) -> list[ExpertMixture]:
    """The model's mixture blocks in layer order (none for the dense router or another model)."""
    return [m for m in model.modules() if isinstance(m, ExpertMixture)]


def share_stats(counts: torch.Tensor) -> dict:
    """Token-slot counts → shares, entropy (nats), entropy / ln K, max and min share, max/min."""
    counts = counts.double()
    total = float(counts.sum())
    k = counts.numel()
    shares = counts / total if total else torch.zeros_like(counts)
    nonzero = shares[shares > 0]
    entropy = float(-(nonzero * nonzero.log()).sum())
    lo, hi = float(shares.min()), float(shares.max())
    return {"slots": int(total), "shares": [round(float(s), 6) for s in shares], "entropy": entropy,
            "entropy_norm": entropy / math.log(k) if k > 1 else 1.0, "max_share": hi, "min_share": lo,
            "max_over_min": hi / lo if lo > 0 else None}


def normalized_mutual_information(joint: torch.Tensor) -> float | None:
    """I(A;B)/√(H(A)H(B)) of a joint count table; ``None`` when a marginal has zero entropy or no counts."""
    p = joint.double()
    total = p.sum()
    if total <= 0:
        return None
    p = p / total
    pa, pb = p.sum(1), p.sum(0)

    ha, hb = _entropy(pa), _entropy(pb)
    if ha <= 0 or hb <= 0:
        return None
    nz = p > 0
    mi = float((p[nz] * (p[nz] / (pa[:, None] * pb[None, :])[nz]).log()).sum())
    return mi / math.sqrt(ha * hb)


def _entropy(q: torch.Tensor) -> float:
    q = q[q > 0]
    return float(-(q * q.log()).sum())


def kappa(model) -> float | None:
    """κ: mean normalised mutual information of adjacent layers' top-1 experts (see the module docstring)."""
    joint = next((b for n, b in _counters(_core(model)) if n.endswith("routing_joint")), None)
    if joint is None:
        return None
    values = [v for layer in joint if (v := normalized_mutual_information(layer)) is not None]
    return sum(values) / len(values) if values else None


def routing_stats(model) -> dict:
    """Load balance and κ from the model's counters: per layer, and all layers' counts summed."""
    blocks = mixtures(model)
    config = _core(model).config
    if not blocks:
        return {"router": getattr(config, "router", "dense"), "layers": [], "overall": None, "kappa": None}
    layers = [share_stats(b.expert_tokens) for b in blocks]
    overall = share_stats(torch.stack([b.expert_tokens for b in blocks]).sum(0))
    return {"router": config.router, "n_experts": config.n_experts, "experts_per_token": config.experts_per_token,
            "layers": layers, "overall": overall, "kappa": kappa(model)}


@contextlib.contextmanager
def fresh_counts(model):
    """Within the block, the routing counters start at zero and count in eval mode too; after it,
    the training counts are put back."""
    blocks = mixtures(model)
    core = _core(model)
    saved = {name: buf.clone() for name, buf in _counters(core)}
    for _, buf in _counters(core):
        buf.zero_()
    for b in blocks:
        b.recording = True
    try:
        yield
    finally:
        for b in blocks:
            b.recording = False
        for name, buf in _counters(core):
            buf.copy_(saved[name])


def held_out_routing(model, token_ids: list[list[int]], *, batch_size: int = 8) -> dict:
    """:func:`routing_stats` of the routing of ``token_ids`` (lists of ids, each one sequence) in
    eval mode, without gradients; the training counts are left as they were."""
    device = next(model.parameters()).device
    pad = _core(model).config.pad_token_id or 0
    was_training = model.training
    model.eval()
    try:
        with fresh_counts(model), torch.no_grad():
            for i in range(0, len(token_ids), batch_size):
                batch = [list(t) for t in token_ids[i:i + batch_size] if t]
                if not batch:
                    continue
                width = max(map(len, batch))
                ids = torch.tensor([t + [pad] * (width - len(t)) for t in batch], device=device)
                mask = torch.tensor([[1] * len(t) + [0] * (width - len(t)) for t in batch], device=device)
                model(input_ids=ids, attention_mask=mask, use_cache=False)
            return routing_stats(model)
    finally:
        model.train(was_training)


def _core(model):
    """The transformers model under a PEFT wrapper, or the model itself."""
    from peft import PeftModel

    return model.get_base_model() if isinstance(model, PeftModel) else model


def _counters(core) -> list[tuple[str, torch.Tensor]]:
    return [(n, b) for n, b in core.named_buffers() if n.endswith(("expert_tokens", "routing_joint"))]


# --------------------------------------------------------------------------- building


def parameter_count(config: ConstellationConfig, *, gate: bool = True) -> int:
    """Trainable parameters (tied embedding once); ``gate=False`` leaves out the learned gates."""
    h, layers, v = config.hidden_size, config.num_hidden_layers, config.vocab_size
    kv = config.num_key_value_heads * config.head_dim
    attention = 2 * h * h + 2 * h * kv  # q, o; k, v
    mlp = 3 * h * config.n_experts * config.expert_intermediate
    gates = h * config.n_experts if gate and config.router == "learned" else 0
    head = 0 if config.tie_word_embeddings else v * h
    return v * h + head + layers * (attention + mlp + gates + 2 * h) + h


def constellation_config(depth: int, tokenizer, *, n_experts: int = 8, router: str = "e8", experts_per_token: int = 2,
                         expert_intermediate: int | None = None, prototypes: str = "simple", router_seed: int = 0,
                         context: int = 2048, aux_loss_coef: float = 0.01) -> ConstellationConfig:
    """The kernel family's config at ``depth`` (slmlab.kernel.model) with its MLPs made a constellation.

    ``expert_intermediate`` defaults to the family's MLP width (128 · depth): each expert is as wide
    as a plain kernel's MLP, and the dense arm K times wider.
    """
    from slmlab.kernel.model import kernel_config

    base = kernel_config(depth, tokenizer, context=context)
    fields = base.to_dict()
    for key in ("model_type", "architectures", "transformers_version", "intermediate_size"):
        fields.pop(key, None)
    return make_config(**fields, n_experts=n_experts, router=router, experts_per_token=experts_per_token,
                               expert_intermediate=expert_intermediate or base.intermediate_size,
                               prototypes=prototypes, router_seed=router_seed, aux_loss_coef=aux_loss_coef)


def build_constellation(config: ConstellationConfig, *, seed: int = 0) -> ConstellationForCausalLM:
    """A freshly initialised constellation; its weights depend only on (config, seed); the caller's RNG is untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return ConstellationForCausalLM(config)


@dataclass(frozen=True)
class ConstellationInit:
    out_dir: Path
    config: ConstellationConfig
    params: int
    seed: int


def init_constellation(depth: int, n_experts: int, router: str, tokenizer_dir: str | Path, out_dir: str | Path, *,
                       seed: int = 0, experts_per_token: int = 2, expert_intermediate: int | None = None,
                       prototypes: str = "simple", context: int = 2048, overwrite: bool = False) -> ConstellationInit:
    """Write a new constellation model directory (config.json, model.safetensors, tokenizer, kernel.json).

    ``seed`` sets both the weights' initialisation and the routers' projections (``router_seed``).
    """
    import json

    from slmlab.kernel.model import kernel_size
    from slmlab.kernel.tokenizer import IM_END, load_kernel_tokenizer
    from slmlab.outputs import check_output
    from slmlab.train.record import save_pretrained_atomically

    kernel_size(depth, 1)  # a bad depth fails before anything loads
    if router not in ROUTERS:
        raise SlmlabError(f"--router must be one of {', '.join(ROUTERS)}, got {router!r}")
    out = check_output(out_dir, "dir", overwrite=overwrite, what="model directory")
    tokenizer = load_kernel_tokenizer(tokenizer_dir)
    config = constellation_config(depth, tokenizer, n_experts=n_experts, router=router,
                                  experts_per_token=experts_per_token, expert_intermediate=expert_intermediate,
                                  prototypes=prototypes, router_seed=seed, context=context)
    model = build_constellation(config, seed=seed)
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids(IM_END)]
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    out.parent.mkdir(parents=True, exist_ok=True)
    save_pretrained_atomically(model, tokenizer, out)
    params = sum(p.numel() for p in model.parameters())
    assert params == parameter_count(config), "the parameter formula disagrees with the model"
    record = {"family": "slmlab-constellation", "depth": depth, "seed": seed, "router": router, "n_experts": n_experts,
              "experts_per_token": experts_per_token, "expert_intermediate": config.expert_intermediate,
              "prototypes": prototypes, "params": params, "context": context, "tokenizer": str(tokenizer_dir)}
    (out / "kernel.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return ConstellationInit(out, config, params, seed)


__all__ = ["BASIN_DIM", "MODEL_TYPE", "PROTOTYPES", "ROUTERS", "AddAuxiliaryLoss", "ConstellationConfig",
           "ConstellationForCausalLM", "ConstellationInit", "ConstellationModel", "Expert", "ExpertMixture",
           "build_constellation", "constellation_config", "fresh_counts", "held_out_routing", "init_constellation",
           "kappa", "make_config", "mixtures", "normalized_mutual_information", "parameter_count", "routing_stats",
           "share_stats", "switch_balance_loss"]
