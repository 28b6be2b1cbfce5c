"""Training data: records → (prompt, completion) pairs → token ids → scheduling units → batches.

Everything here runs before a model loads, so a bad dataset fails fast. The pieces are public:
the server, the kernel and the series runner build batches with the same functions.

* :func:`prepare_data` — a config's data (any shape of :mod:`slmlab.data.shapes`, from JSONL,
  JSON, Parquet, CSV or a ``save_to_disk`` directory), rendered, tokenized, checked.
* :func:`encode_records` — records of one shape → examples: slmlab's records and text
  preference records through the objective's template pairs (as always), ``prompt``/``completion``
  text as given, conversations through the tokenizer's chat template with loss on assistant
  turns only (:func:`conversation_tokens`), ``text`` as plain language modelling.
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
from dataclasses import asdict, dataclass, field
from pathlib import Path

from slmlab.errors import SlmlabError
from slmlab.train.batching import (
    IGNORE,
    Encoded,
    EncodeStats,
    collate,
    collate_frozen,
    encode_pair,
    encode_pairs,
    pack,
    pack_tight,
)


class TrainingError(SlmlabError):
    """The run cannot go on (NaN loss, empty data, …); the message says where and why."""


@dataclass
class DataStats(EncodeStats):
    """:class:`EncodeStats` plus the examples refused before encoding (and the first reasons why)."""

    refused: int = 0  # e.g. a chat template whose rendered prompt is not a token prefix of the conversation
    reasons: list[str] = field(default_factory=list)  # the first few refusals, "record N: why"


@dataclass
class TrainData:
    train: list[Encoded]
    evals: list[Encoded]
    stats: EncodeStats
    categories: list[str]  # per training record: its ``category`` field, else "default"
    shape: str = "slmlab"  # the training records' shape (slmlab.data.shapes.SHAPES)
    eval_shape: str | None = None


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


def check_objective(objective, shape: str, where: str) -> None:
    """A clear error when ``objective`` cannot train on records of ``shape``."""
    from slmlab.data.shapes import PREFERENCE_SHAPES, SFT_SHAPES, SHAPES

    accepted = PREFERENCE_SHAPES if getattr(objective, "unit_size", 1) == 2 else SFT_SHAPES
    if shape not in accepted:
        name = getattr(objective, "name", type(objective).__name__)
        raise TrainingError(
            f"{where}: objective {name!r} cannot train on {shape} records ({', '.join(SHAPES[shape].keys)}); "
            "it accepts: " + "; ".join(f"{s} ({', '.join(SHAPES[s].keys)})" for s in accepted)
        )


def prepare_data(config, run_dir: Path, tokenizer, objective) -> TrainData:
    """Build, read, render and tokenize the data; every data error surfaces here, before the model loads."""
    from slmlab.data.shapes import detect_shape, read_dataset

    data = config.data
    if data.recipe:
        from slmlab.data.recipes import generate_dataset

        ds = generate_dataset(data.recipe, run_dir / "data", count=data.count, seed=config.seed)
        train_recs, eval_recs = ds.train, ds.test
        where = f"recipe {data.recipe}"
        train_shape = detect_shape(train_recs, where) if train_recs else None
        eval_shape = detect_shape(eval_recs, where) if eval_recs else None
        eval_where = where
    else:
        train_recs, train_shape = read_dataset(Path(data.train), split=data.split, columns=data.columns,
                                               allow_empty=True, default_splits=("train",))
        # An eval file was asked for: an empty one is an error, not a silent run without evaluation.
        eval_recs, eval_shape = (
            read_dataset(Path(data.eval), split=data.eval_split, columns=data.columns,
                         default_splits=("test", "validation", "eval"))
            if data.eval else ([], None)
        )
        where, eval_where = data.train, data.eval
    if not train_recs:
        raise TrainingError(f"{where}: the training data is empty")
    check_objective(objective, train_shape, where)
    if eval_recs:
        check_objective(objective, eval_shape, eval_where)
    train, stats = encode_records(train_recs, train_shape, objective, data.format, tokenizer, data.max_length,
                                  data.truncation, where)
    evals, _ = (encode_records(eval_recs, eval_shape, objective, data.format, tokenizer, data.max_length,
                               data.truncation, eval_where) if eval_recs else ([], None))
    train, evals = complete_units(train, objective.unit_size), complete_units(evals, objective.unit_size)
    if not train:
        if stats.refused and not stats.dropped:
            raise TrainingError(
                f"{where}: all {stats.total} examples were refused; the first: " + "; ".join(stats.reasons[:3])
            )
        refused = f" ({stats.refused} more were refused: {stats.reasons[0]})" if stats.refused else ""
        raise TrainingError(
            f"{where}: all {stats.total} examples were dropped: none fits max_length={data.max_length} "
            f"with its completion (truncation={data.truncation!r}). Raise data.max_length.{refused}"
        )
    categories = [str(r.get("category") or "default") for r in train_recs]
    return TrainData(train, evals, stats, categories, train_shape, eval_shape)


# --------------------------------------------------------------------------- shapes → examples

_MAX_REASONS = 5


def encode_records(records: list[dict], shape: str, objective, default_format: str, tokenizer, max_length: int,
                   truncation: str = "drop", where: str = "data") -> tuple[list[Encoded], DataStats]:
    """Records of one ``shape`` → examples (index = record, or 2k/2k+1 for preference pairs) and stats.

    * ``slmlab``, ``preference (text)``: ``objective.pairs`` — the record's template, as always.
    * ``prompt-completion`` (text): prompt and completion as given, no template (TRL does the
      same for non-conversational prompt-completion data), EOS appended to the completion.
    * ``conversational``, ``prompt-completion (conversational)``, ``preference (conversational)``:
      the tokenizer's chat template; loss on assistant turns only (:func:`conversation_tokens`).
    * ``language-modelling``: every token of ``text`` plus EOS is learned; with ``"eos": false``
      (a chunk whose document continues in the next record, as ``slmlab kernel corpus`` writes
      them) no EOS is appended, so the model never learns to end a text where a chunk was cut.

    Truncation follows :func:`slmlab.train.batching.encode_pair` (drop by default). An example the
    chat template cannot split consistently is *refused* (counted, with its reason, in the stats).
    """
    if shape in ("slmlab", "preference (text)"):
        encoded, st = encode_pairs(objective.pairs(records, default_format, tokenizer, where), tokenizer, max_length,
                                   truncation)
        return encoded, DataStats(**asdict(st))
    if shape == "prompt-completion":
        eos = _eos(tokenizer)
        pairs = [(r["prompt"], r["completion"] if r["completion"].endswith(eos) else r["completion"] + eos)
                 for r in records]
        encoded, st = encode_pairs(pairs, tokenizer, max_length, truncation)
        return encoded, DataStats(**asdict(st))
    stats = DataStats()
    out: list[Encoded] = []
    for i, rec in enumerate(records):
        for k, item in enumerate(_token_examples(rec, shape, tokenizer)):
            stats.total += 1
            if isinstance(item, str):
                stats.refused += 1
                if len(stats.reasons) < _MAX_REASONS:
                    stats.reasons.append(f"record {i + 1}: {item}")
                continue
            ids, mask = item
            enc, what = encode_masked(i * (2 if shape.startswith("preference") else 1) + k, ids, mask, max_length,
                                      truncation)
            if what != "ok":
                setattr(stats, what, getattr(stats, what) + 1)
            if enc is not None:
                out.append(enc)
    return out, stats


def _token_examples(rec: dict, shape: str, tokenizer) -> list[tuple[list[int], list[bool]] | str]:
    """(ids, supervised mask) per example of one record, or the reason it is refused."""
    def safe(messages, first):
        try:
            return conversation_tokens(messages, tokenizer, first)
        except Refused as exc:
            return str(exc)

    if shape == "language-modelling":
        ids = _ids(tokenizer, rec["text"])
        eos_id = tokenizer.eos_token_id
        if eos_id is None:
            _eos(tokenizer)
        if rec.get("eos", True) and (not ids or ids[-1] != eos_id):
            ids = ids + [eos_id]
        if len(ids) < 2:
            return ["the text is empty: nothing to learn"]
        return [(ids, [False] + [True] * (len(ids) - 1))]
    if shape == "conversational":
        return [safe(rec["messages"], 0)]
    if shape == "prompt-completion (conversational)":
        return [safe(rec["prompt"] + rec["completion"], len(rec["prompt"]))]
    if shape == "preference (conversational)":
        return [safe(rec["prompt"] + rec[k], len(rec["prompt"])) for k in ("chosen", "rejected")]
    raise TrainingError(f"no encoding for records of shape {shape!r}")


class Refused(SlmlabError):
    """An example that cannot be encoded faithfully; the message says why (it is counted, not raised)."""


def _eos(tokenizer) -> str:
    from slmlab.data.roles import _eos as eos

    return eos(tokenizer)


def _ids(tokenizer, text: str) -> list[int]:
    # No special tokens: a chat template writes its own BOS (adding one here would double it), and
    # slmlab's text prompts never had one.
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _chat(tokenizer, messages: list[dict], add_generation_prompt: bool) -> str:
    if not getattr(tokenizer, "chat_template", None):
        raise TrainingError(
            f"conversational data needs a chat template, and tokenizer {getattr(tokenizer, 'name_or_path', '')!r} "
            "has none; use prompt/completion or slmlab records with a text template such as v6"
        )
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    except Exception as exc:  # jinja raises its own errors ("roles must alternate", …)
        raise Refused(f"the chat template failed: {exc}") from None
    if not isinstance(text, str):
        raise TrainingError(f"apply_chat_template returned {type(text).__name__}, not text")
    return text


def _special_ids(tokenizer) -> set[int]:
    ids = set(getattr(tokenizer, "all_special_ids", []) or [])
    for i, tok in (getattr(tokenizer, "added_tokens_decoder", None) or {}).items():
        if getattr(tok, "special", False):
            ids.add(i)
    return ids


def conversation_tokens(messages: list[dict], tokenizer, first: int = 0) -> tuple[list[int], list[bool]]:
    """A conversation rendered by the chat template: (token ids, which tokens are learned).

    Learned: the tokens of every assistant turn at index ``first`` or later — its content and its
    end-of-turn token (SmolLM2: ``<|im_end|>``), not the turn's header (``<|im_start|>assistant\\n``,
    which the generation prompt supplies at inference) nor whitespace the template writes after
    the end-of-turn token. Each turn's span comes from rendering the conversation up to it: with
    the generation prompt (where the turn starts) and with the turn (where it ends). Both must be
    token prefixes of the whole conversation's rendering, else the tokens the model is given at
    generation time are not the ones it was trained on and :class:`Refused` says so. Tokens come
    from the rendered text without added special tokens (no second BOS), and the generation prompt
    is never added to the whole conversation, so each assistant header appears once.
    """
    msgs = [{k: v for k, v in m.items() if v is not None} for m in messages]
    turns = [j for j in range(first, len(msgs)) if msgs[j].get("role") == "assistant"]
    if not turns:
        raise Refused("no assistant turn to learn" + (" in the completion" if first else ""))
    full = _chat(tokenizer, msgs, add_generation_prompt=False)
    full_ids = _ids(tokenizer, full)
    mask = [False] * len(full_ids)
    special = _special_ids(tokenizer)
    for j in turns:
        head = _chat(tokenizer, msgs[:j], add_generation_prompt=True)
        upto = _chat(tokenizer, msgs[: j + 1], add_generation_prompt=False)
        head_ids, upto_ids = _ids(tokenizer, head), _ids(tokenizer, upto)
        for what, text, ids in (("the prompt before", head, head_ids), ("the conversation up to and with", upto, upto_ids)):
            if full_ids[: len(ids)] != ids:
                at = next((t for t, (a, b) in enumerate(zip(ids, full_ids)) if a != b), min(len(ids), len(full_ids)))
                raise Refused(
                    f"the chat template renders {what} assistant message {j + 1} differently alone than inside the "
                    f"whole conversation (first difference at token {at}: alone "
                    f"{tokenizer.decode(ids[at:at + 8])!r}, in the conversation {tokenizer.decode(full_ids[at:at + 8])!r}), "
                    "so the model would be trained on a context it is never given"
                )
        start, end = len(head_ids), len(upto_ids)
        # "<|im_end|>\n": learn the end-of-turn token, not the newline the template writes after it.
        k = end
        while k > start and full_ids[k - 1] not in special and not tokenizer.decode([full_ids[k - 1]]).strip():
            k -= 1
        if start < k < end and full_ids[k - 1] in special:
            end = k
        if end <= start:
            raise Refused(f"assistant message {j + 1} renders to no tokens")
        for t in range(start, end):
            mask[t] = True
    return full_ids, mask


def encode_masked(index: int, ids: list[int], mask: list[bool], max_length: int,
                  truncation: str = "drop") -> tuple[Encoded | None, str]:
    """An example from ids and a per-token "learned" mask (several spans allowed), with encode_pair's rules.

    Everything before the first learned token plays the prompt: ``drop`` drops a too-long example;
    ``left`` cuts the prompt from the left, or, when the rest alone is too long, keeps one token
    before the first learned one and cuts at the right.
    """
    first = next((t for t in range(1, len(ids)) if mask[t]), None)  # token 0 has nothing before it to predict it
    if first is None:
        return None, "dropped"
    what = "ok"
    if len(ids) > max_length:
        if truncation == "drop":
            return None, "dropped"
        if len(ids) - (first - 1) <= max_length:
            start, what = len(ids) - max_length, "prompt_truncated"
        else:
            start, what = first - 1, "completion_truncated"
        ids, mask = ids[start: start + max_length], mask[start: start + max_length]
    targets = [ids[t + 1] if mask[t + 1] else IGNORE for t in range(len(ids) - 1)] + [IGNORE]
    if all(t == IGNORE for t in targets):
        return None, "dropped"
    return Encoded(index, ids, targets), what


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
    """One micro-batch of tensors: packed rows (block-diagonal attention, sized by :func:`pack_tight`), or context-frozen."""
    examples = [e for u in unit_list for e in u]
    if frozen:
        return collate_frozen(examples, pad_id)
    return collate(pack_tight(examples) if packing else pack(examples, max_length, packing=False), pad_id)


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
