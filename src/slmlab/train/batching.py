"""From (prompt, completion) pairs to packed training rows.

Three guarantees live here, each tested:

* **Completion-only targets.** Prompt and completion are tokenized separately and
  concatenated, so the boundary is exact and identical to generation time (the prompt
  is what the model will be given; the completion is what it must produce). Targets
  are built from that boundary, never from "token != pad", so the EOS at the end of
  every completion is supervised even when the tokenizer's pad token *is* EOS.
* **Packing without cross-talk.** Several examples share a row; each restarts its
  position ids at 0 and the row has no 2-D attention mask. transformers then builds
  a block-diagonal causal mask from the position ids
  (``masking_utils.find_packed_sequence_indices``), so no example attends to another.
  Padding at a row's end is its own block with no targets.
* **Targets are pre-shifted.** ``targets[t]`` is the token the model must predict at
  position ``t`` (i.e. ``ids[t+1]``) or ``IGNORE``; the last position of each example
  is always ``IGNORE``, so an example never predicts its neighbour's first token.
"""

from __future__ import annotations

from dataclasses import dataclass

IGNORE = -100


@dataclass(frozen=True)
class Encoded:
    """One example: token ids and pre-shifted targets (same length)."""

    index: int  # position in the dataset, for error messages and resume checks
    ids: list[int]
    targets: list[int]

    @property
    def n_supervised(self) -> int:
        return sum(t != IGNORE for t in self.targets)


@dataclass
class EncodeStats:
    total: int = 0
    prompt_truncated: int = 0
    completion_truncated: int = 0
    dropped: int = 0  # nothing left to supervise after truncation


def encode_pair(
    index: int, prompt_ids: list[int], completion_ids: list[int], max_length: int, truncation: str = "drop"
) -> tuple[Encoded | None, str]:
    """Join one pair, handling examples longer than ``max_length``. Returns (example or None, what happened).

    ``truncation="drop"`` (the default) drops such examples: cutting a puzzle's premises
    can change its right answer, so a verified label would silently become a wrong one.
    ``truncation="left"`` keeps the completion and cuts the prompt from its *left*; only
    when the completion alone is longer than the window is the completion cut at the right.
    """
    if not completion_ids:
        return None, "dropped"
    if len(prompt_ids) + len(completion_ids) > max_length and truncation == "drop":
        return None, "dropped"
    what = "ok"
    room_for_prompt = max_length - len(completion_ids)
    if room_for_prompt < 1:
        # Keep one prompt token so there is a position that predicts the first completion token.
        prompt_ids = prompt_ids[-1:]
        completion_ids = completion_ids[: max_length - len(prompt_ids)]
        what = "completion_truncated"
    elif len(prompt_ids) > room_for_prompt:
        prompt_ids = prompt_ids[-room_for_prompt:]
        what = "prompt_truncated"
    if not prompt_ids or not completion_ids:
        return None, "dropped"
    ids = prompt_ids + completion_ids
    # Position t predicts ids[t+1]; supervise exactly the completion tokens.
    targets = [IGNORE] * (len(prompt_ids) - 1) + completion_ids + [IGNORE]
    return Encoded(index, ids, targets), what


def encode_pairs(
    pairs: list[tuple[str, str]], tokenizer, max_length: int, truncation: str = "drop"
) -> tuple[list[Encoded], EncodeStats]:
    """Tokenize (prompt, completion) pairs in two batched calls and join them."""
    stats = EncodeStats(total=len(pairs))
    if not pairs:
        return [], stats
    prompts = tokenizer([p for p, _ in pairs], add_special_tokens=False)["input_ids"]
    completions = tokenizer([c for _, c in pairs], add_special_tokens=False)["input_ids"]
    out: list[Encoded] = []
    for i, (p, c) in enumerate(zip(prompts, completions)):
        enc, what = encode_pair(i, p, c, max_length, truncation)
        if what != "ok":
            setattr(stats, what, getattr(stats, what) + 1)
        if enc is not None:
            out.append(enc)
    return out, stats


@dataclass
class Row:
    """A packed row: several examples back to back."""

    ids: list[int]
    targets: list[int]
    positions: list[int]
    example_ids: list[int]  # per position: which example it belongs to (-1 for padding)


def pack(examples: list[Encoded], max_length: int, packing: bool = True) -> list[Row]:
    """Put examples into rows of at most ``max_length`` tokens (first-fit decreasing).

    With ``packing=False`` every example gets its own row (the reference behaviour
    the packing test compares against).
    """
    if not packing:
        bins = [[e] for e in examples]
    else:
        bins: list[list[Encoded]] = []
        room: list[int] = []
        for e in sorted(examples, key=lambda e: (-len(e.ids), e.index)):
            for b, free in enumerate(room):
                if len(e.ids) <= free:
                    bins[b].append(e)
                    room[b] -= len(e.ids)
                    break
            else:
                bins.append([e])
                room.append(max_length - len(e.ids))
    return _rows_of(bins)


# Relative cost of attention against the linear layers, per position of a row of width W: a token
# costs ~ (linear MACs) + W × 2·d_model (scores and values), so a row costs ∝ W·(1 + W/ATTENTION_SPAN)
# with ATTENTION_SPAN = linear MACs per token / (2·d_model) ≈ 3000 for SmolLM2-135M (3.5M / 1152).
# Lower is more cautious about long rows: masked attention on CPU computes the whole W×W square.
ATTENTION_SPAN = 2048


def _balanced_bins(examples: list[Encoded], k: int) -> list[list[Encoded]]:
    """Longest example first, each into the least-loaded of ``k`` rows (ties: the lowest row)."""
    bins: list[list[Encoded]] = [[] for _ in range(k)]
    loads = [0] * k
    for e in sorted(examples, key=lambda e: (-len(e.ids), e.index)):
        b = loads.index(min(loads))
        bins[b].append(e)
        loads[b] += len(e.ids)
    return [b for b in bins if b]


def _rows_of(bins: list[list[Encoded]]) -> list[Row]:
    rows = []
    for b in bins:
        row = Row([], [], [], [])
        for e in b:
            row.ids += e.ids
            row.targets += e.targets
            row.positions += list(range(len(e.ids)))
            row.example_ids += [e.index] * len(e.ids)
        rows.append(row)
    return rows


def pack_tight(examples: list[Encoded], attention_span: int = ATTENTION_SPAN) -> list[Row]:
    """Pack a micro-batch into the row layout that computes the fewest positions.

    :func:`pack` fills rows of ``max_length``; a micro-batch of short examples then leaves most
    of its last rows as padding (8 glyph puzzles of ~24 tokens: 192 real tokens in 256 positions).
    Here the rows' width follows the real token count: for k = 1, 2, … rows, the examples are
    spread longest-first over the k rows (each to the least-loaded one), the width W is the
    fullest row, and the layout with the lowest cost k·W·(1 + W/attention_span) wins. A row may
    be longer than ``max_length``: each example still attends only to itself (positions restart,
    block-diagonal mask), so ``max_length`` keeps bounding what any example sees.
    """
    if not examples:
        return []
    longest = max(len(e.ids) for e in examples)
    best, best_cost = None, float("inf")
    for k in range(1, len(examples) + 1):
        bins = _balanced_bins(examples, k)
        width = max(sum(len(e.ids) for e in b) for b in bins)
        cost = len(bins) * width * (1 + width / attention_span)
        if cost < best_cost:
            best, best_cost = bins, cost
        if width == longest:  # more rows cannot make them narrower
            break
    return _rows_of(best)


def collate(rows: list[Row], pad_id: int):
    """Stack rows into tensors, padding each to the longest row.

    Padding is a separate block (positions restart at 0), so it attends only to
    itself and has no targets: no attention mask is needed.
    """
    import torch

    width = max(len(r.ids) for r in rows)
    ids, targets, positions, example_ids = [], [], [], []
    for r in rows:
        pad = width - len(r.ids)
        ids.append(r.ids + [pad_id] * pad)
        targets.append(r.targets + [IGNORE] * pad)
        positions.append(r.positions + list(range(pad)))
        example_ids.append(r.example_ids + [-1] * pad)
    return {
        "input_ids": torch.tensor(ids, dtype=torch.long),
        "targets": torch.tensor(targets, dtype=torch.long),
        "position_ids": torch.tensor(positions, dtype=torch.long),
        "example_ids": torch.tensor(example_ids, dtype=torch.long),
    }


def first_supervised(example: Encoded) -> int:
    """Index of the last prompt token: the first position that has a target."""
    return next(i for i, t in enumerate(example.targets) if t != IGNORE)


def collate_frozen(examples: list[Encoded], pad_id: int):
    """Batch for context-frozen training: a left-padded context and a right-padded continuation.

    The context is the prompt minus its last token; the continuation is that last
    prompt token plus the completion. The last prompt token must run with gradients:
    its output predicts the first completion token (often the answer itself).
    """
    import torch

    splits = [first_supervised(e) for e in examples]
    if min(splits) < 1:
        raise ValueError("context-frozen mode needs prompts of at least two tokens")
    c = max(splits)
    k = max(len(e.ids) - s for e, s in zip(examples, splits))
    ctx_ids, ctx_mask, cont_ids, cont_targets, cont_mask, cont_pos, example_ids = [], [], [], [], [], [], []
    for e, s in zip(examples, splits):
        ctx, cont, tgt = e.ids[:s], e.ids[s:], e.targets[s:]
        ctx_ids.append([pad_id] * (c - s) + ctx)
        ctx_mask.append([0] * (c - s) + [1] * s)
        pad = k - len(cont)
        cont_ids.append(cont + [pad_id] * pad)
        cont_targets.append(tgt + [IGNORE] * pad)
        cont_mask.append([1] * len(cont) + [0] * pad)
        cont_pos.append(list(range(s, s + k)))
        example_ids.append([e.index] * len(cont) + [-1] * pad)
    ctx_mask_t = torch.tensor(ctx_mask, dtype=torch.long)
    return {
        "context_ids": torch.tensor(ctx_ids, dtype=torch.long),
        "context_mask": ctx_mask_t,
        "context_positions": (ctx_mask_t.cumsum(-1) - 1).clamp(min=0),
        "input_ids": torch.tensor(cont_ids, dtype=torch.long),
        "targets": torch.tensor(cont_targets, dtype=torch.long),
        "position_ids": torch.tensor(cont_pos, dtype=torch.long),
        "attention_mask": torch.cat([ctx_mask_t, torch.tensor(cont_mask, dtype=torch.long)], dim=1),
        "example_ids": torch.tensor(example_ids, dtype=torch.long),
    }
