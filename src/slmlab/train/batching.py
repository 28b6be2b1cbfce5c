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
