"""Training data: records → (prompt, completion) pairs → token ids → scheduling units → batches.

Everything here runs before a model loads, so a bad dataset fails fast. The pieces are public:
the server, the kernel and the series runner build batches with the same functions.

* :func:`prepare_data` — a config's data, rendered with its template, tokenized, checked.
* :func:`units` — scheduling units: single examples (SFT) or (chosen, rejected) pairs.
* :class:`DataPlan` — which units each optimizer step sees (a seeded permutation per epoch, so
  any step can be recomputed: resume is exact because the data position is a number).
* :func:`make_batch` — units → one collated micro-batch (packed rows or context-frozen).
* :func:`examples_from_token_ids` — raw token ids (context + continuation, as a server receives
  them) → examples, without a tokenizer.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path

from slmlab.errors import SlmlabError
from slmlab.train.batching import EncodeStats, Encoded, collate, collate_frozen, encode_pair, encode_pairs, pack


class TrainingError(SlmlabError):
    """The run cannot go on (NaN loss, empty data, …); the message says where and why."""


@dataclass
class TrainData:
    train: list[Encoded]
    evals: list[Encoded]
    stats: EncodeStats
    categories: list[str]  # per training record: its ``category`` field, else "default"


def records_to_pairs(records: list[dict], default_format: str, tokenizer, where: str) -> list[tuple[str, str]]:
    """slmlab records (``input``/``output``, optional ``format``/``role``) rendered by their template."""
    from slmlab.data.roles import load_template, render

    cache: dict[str, object] = {}
    pairs = []
    for i, rec in enumerate(records):
        name = rec.get("role") or rec.get("format") or default_format
        if name not in cache:
            cache[name] = load_template(name)
        for key in ("input", "output"):
            if not isinstance(rec.get(key), str):
                raise TrainingError(f"{where}: record {i + 1} has no string field {key!r}")
        pairs.append(render(rec, cache[name], tokenizer))
    return pairs


def preference_pairs(records: list[dict], default_format: str, tokenizer, where: str) -> list[tuple[str, str]]:
    """Preference record k becomes examples 2k (prompt, chosen) and 2k+1 (prompt, rejected)."""
    out = []
    for i, rec in enumerate(records):
        for key in ("prompt", "chosen", "rejected"):
            if not isinstance(rec.get(key), str):
                raise TrainingError(f"{where}: preference record {i + 1} needs string fields prompt, chosen, rejected (missing {key!r})")
        for answer in (rec["chosen"], rec["rejected"]):
            out += records_to_pairs([{**rec, "input": rec["prompt"], "output": answer}], default_format, tokenizer, where)
    return out


def _load_records(path: Path, allow_empty: bool = True) -> list[dict]:
    from slmlab.io import read_jsonl

    return read_jsonl(path, allow_empty=allow_empty)


def prepare_data(config, run_dir: Path, tokenizer, objective) -> TrainData:
    """Build, render and tokenize the data; every data error surfaces here, before the model loads."""
    if config.data.recipe:
        from slmlab.data.recipes import generate_dataset

        ds = generate_dataset(config.data.recipe, run_dir / "data", count=config.data.count, seed=config.seed)
        train_recs, eval_recs = ds.train, ds.test
        where = f"recipe {config.data.recipe}"
    else:
        train_recs = _load_records(Path(config.data.train))
        # An eval file was asked for: an empty one is an error, not a silent run without evaluation.
        eval_recs = _load_records(Path(config.data.eval), allow_empty=False) if config.data.eval else []
        where = config.data.train
    if not train_recs:
        raise TrainingError(f"{where}: the training data is empty")
    train_pairs = objective.pairs(train_recs, config.data.format, tokenizer, where)
    eval_pairs = objective.pairs(eval_recs, config.data.format, tokenizer, where) if eval_recs else []
    train, stats = encode_pairs(train_pairs, tokenizer, config.data.max_length, config.data.truncation)
    evals, _ = encode_pairs(eval_pairs, tokenizer, config.data.max_length, config.data.truncation)
    train, evals = complete_units(train, objective.unit_size), complete_units(evals, objective.unit_size)
    if not train:
        raise TrainingError(
            f"{where}: all {stats.total} examples were dropped: none fits max_length={config.data.max_length} "
            f"with its completion (truncation={config.data.truncation!r}). Raise data.max_length."
        )
    categories = [str(r.get("category") or "default") for r in train_recs]
    return TrainData(train, evals, stats, categories)


def complete_units(examples: list[Encoded], unit_size: int) -> list[Encoded]:
    """Drop examples whose unit lost a member to truncation (a preference pair missing one side)."""
    if unit_size == 1:
        return examples
    present = {e.index for e in examples}
    return [e for e in examples if all(e.index - e.index % unit_size + k in present for k in range(unit_size))]


def units(examples: list[Encoded], unit_size: int) -> list[list[Encoded]]:
    """Scheduling units: single examples (``unit_size`` 1) or the examples of one record, by index."""
    if unit_size == 1:
        return [[e] for e in examples]
    by_index = {e.index: e for e in examples}
    return [[by_index[i + k] for k in range(unit_size)] for i in sorted(by_index) if i % unit_size == 0]


def unit_categories(unit_list: list[list[Encoded]], record_categories: list[str]) -> list[str]:
    """Category of each scheduling unit (a unit's examples come from record index // unit size)."""
    per_unit = len(unit_list[0]) if unit_list else 1
    return [record_categories[u[0].index // per_unit] for u in unit_list]


class DataPlan:
    """Which units each optimizer step sees: a seeded permutation per epoch, so any step can be recomputed.

    That is what makes resume exact: the data position is just the step number.
    """

    def __init__(self, unit_list: list[list[Encoded]], batch_size: int, grad_accum: int, world: int, seed: int):
        self.units, self.batch_size, self.grad_accum, self.world, self.seed = unit_list, batch_size, grad_accum, world, seed
        self.per_step = batch_size * grad_accum * world
        # With several processes a partial last step could leave a process without a
        # micro-batch (it would then wait forever in the all-reduce): drop it, as drop_last does.
        steps = len(unit_list) / self.per_step
        self.steps_per_epoch = max(1, math.floor(steps) if world > 1 else math.ceil(steps))
        self._perm_epoch, self._perm = -1, []

    def _permutation(self, epoch: int) -> list[int]:
        if epoch != self._perm_epoch:
            order = list(range(len(self.units)))
            random.Random(f"{self.seed}:epoch:{epoch}").shuffle(order)
            self._perm_epoch, self._perm = epoch, order
        return self._perm

    def step_micro_batches(self, step: int) -> list[list[list[Encoded]]]:
        """All micro-batches (lists of units) of ``step`` across every process, in order."""
        epoch, k = divmod(step, self.steps_per_epoch)
        perm = self._permutation(epoch)
        chosen = [self.units[i] for i in perm[k * self.per_step : (k + 1) * self.per_step]]
        return [chosen[i : i + self.batch_size] for i in range(0, len(chosen), self.batch_size)]


def make_batch(unit_list: list[list[Encoded]], max_length: int, packing: bool, pad_id: int, frozen: bool = False) -> dict:
    """One micro-batch of tensors: packed rows (block-diagonal attention), or context-frozen."""
    examples = [e for u in unit_list for e in u]
    if frozen:
        return collate_frozen(examples, pad_id)
    return collate(pack(examples, max_length, packing), pad_id)


def examples_from_token_ids(context_ids: list[list[int]], continuation_ids: list[list[int]],
                            max_length: int | None = None, truncation: str = "drop") -> list[Encoded]:
    """Examples from raw token ids, no tokenizer: loss on each continuation, the context is conditioning.

    Example ``i`` gets index ``i`` (so preference pairs are consecutive: chosen 2k, rejected 2k+1).
    An example that is empty or, with ``truncation="drop"``, longer than ``max_length`` raises:
    a caller that sends ids must learn at once that one was not trained on.
    """
    if len(context_ids) != len(continuation_ids):
        raise TrainingError(f"{len(context_ids)} contexts but {len(continuation_ids)} continuations")
    out = []
    for i, (ctx, cont) in enumerate(zip(context_ids, continuation_ids)):
        limit = max_length or len(ctx) + len(cont)
        enc, what = encode_pair(i, list(ctx), list(cont), limit, truncation)
        if enc is None:
            raise TrainingError(f"example {i}: nothing to train on ({what}: context {len(ctx)} + continuation "
                                f"{len(cont)} tokens, max_length {limit})")
        out.append(enc)
    return out
