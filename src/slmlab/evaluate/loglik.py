"""In-process log-likelihood scoring, token for token as lm-evaluation-harness scores it.

Defined here:

* :func:`encode_pair` — a (context, continuation) pair → ``(context_ids, continuation_ids)``
  by lm-eval's rule for causal models (see below).
* :func:`continuation_logprobs` — for each pair: the summed log-prob of the continuation
  tokens given the context, and whether every continuation token is the argmax (lm-eval's
  ``loglikelihood`` output ``(logprob, is_greedy)``), computed in right-padded batches.
* :func:`multiple_choice_accuracy` — lm-eval's ``acc`` for ``multiple_choice`` items: the
  prediction is the choice with the highest summed log-prob (first one on ties).
* :func:`logic_choice_items` — multiple-choice items from slmlab's held-out logic puzzles
  (the ``logic`` suite's records in the v6 format, one choice per certainty glyph).
* :func:`write_lm_eval_task` — those items as a local lm-eval task (JSONL + YAML), so the
  harness can run them against ``slmlab serve`` through ``local-completions`` without a hub.

Why: scoring the same items here and through the server with lm-eval must give the same
numbers; any difference is then a bug in the server's ``echo``/``logprobs`` output, not a
tokenization difference.

The tokenization rule (lm-eval 0.4's ``TemplateLM._encode_pair`` + ``TemplateAPI.tok_encode``
with the Hugging Face backend and ``add_bos_token=False``, the default):

1. Trailing whitespace of the context moves to the front of the continuation.
2. ``whole = tok(context + continuation)`` and ``ctx = tok(context)``, both with
   ``add_special_tokens=False`` (no BOS); the continuation's ids are ``whole[len(ctx):]``
   (so a BPE merge across the boundary is attributed to the continuation).
3. An empty context becomes ``[bos_token_id or eos_token_id]`` (lm-eval's ``prefix_token_id``),
   unless the continuation already starts with that token: then that token is the context.
4. ``context + continuation`` longer than ``max_length`` (lm-eval: its ``max_length`` 2048 minus
   the one generated token = 2047) keeps its last ``max_length`` tokens, cutting the context.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "LM_EVAL_MAX_LENGTH",
    "continuation_logprobs",
    "encode_pair",
    "logic_choice_items",
    "multiple_choice_accuracy",
    "write_lm_eval_task",
]

LM_EVAL_MAX_LENGTH = 2047  # TemplateAPI's default max_length (2048) minus the token it asks the API to generate


# --------------------------------------------------------------------------- tokenization


def _encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _prefix_token(tokenizer) -> int:
    return tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """``(context_ids, continuation_ids)`` exactly as lm-eval's ``local-completions`` builds them (module docstring)."""
    if context == "":
        cont = _encode(tokenizer, continuation)
        prefix = _prefix_token(tokenizer)
        return ([prefix], cont) if not cont or cont[0] != prefix else (cont[:1], cont[1:])
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
    whole = _encode(tokenizer, context + continuation)
    ctx = _encode(tokenizer, context)
    return ctx, whole[len(ctx):]


def _truncate(ctx: list[int], cont: list[int], max_length: int | None) -> tuple[list[int], int]:
    """The ids to run and the context length within them (lm-eval's left truncation)."""
    ids = ctx + cont
    if max_length is not None and len(ids) > max_length:
        ids = ids[-max_length:]
    ctxlen = len(ids) - len(cont)
    if ctxlen < 1:
        raise ValueError(f"continuation of {len(cont)} tokens leaves no context within max_length {max_length}")
    return ids, ctxlen


# --------------------------------------------------------------------------- scoring


def _right_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``input_ids``, ``attention_mask`` and ``position_ids``, padded on the right (positions 0.. per row)."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, : len(r)] = 1
    positions = torch.arange(width).expand(len(rows), width).clone()
    return ids, mask, positions


def _score_row(logits: torch.Tensor, ids: list[int], ctxlen: int) -> tuple[float, bool]:
    """One row's ``(sum of continuation log-probs, is_greedy)``; ``logits`` [width, vocab] of that row."""
    targets = torch.tensor(ids[ctxlen:], dtype=torch.long)
    if targets.numel() == 0:
        return 0.0, True
    logprobs = logits[ctxlen - 1: len(ids) - 1].float().log_softmax(-1)
    chosen = logprobs.gather(-1, targets[:, None].to(logprobs.device))[:, 0]
    greedy = bool((logprobs.argmax(-1).cpu() == targets).all())
    return float(chosen.sum()), greedy


@torch.inference_mode()
def _score_batch(model, rows: list[tuple[list[int], int]], pad_id: int) -> list[tuple[float, bool]]:
    device = next(model.parameters()).device
    ids, mask, positions = _right_pad([r for r, _ in rows], pad_id)
    logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=positions.to(device),
                   use_cache=False).logits
    return [_score_row(logits[i], r, ctxlen) for i, (r, ctxlen) in enumerate(rows)]


def continuation_logprobs(model, tokenizer, pairs: list[tuple[str, str]], batch_size: int = 16,
                          max_length: int | None = LM_EVAL_MAX_LENGTH) -> list[tuple[float, bool]]:
    """For each ``(context, continuation)``: ``(sum of the continuation tokens' log-probs, is_greedy)``.

    The same definition and token ids as lm-eval's ``loglikelihood`` through ``local-completions``
    with ``tokenized_requests=True`` and a Hugging Face tokenizer (rule in the module docstring).
    Pairs are scored longest first in right-padded batches of ``batch_size`` (padding after the
    real tokens is masked and causal attention never looks ahead, so a padded row equals the row
    alone); results come back in the order of ``pairs``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    rows = [_truncate(*encode_pair(tokenizer, ctx, cont), max_length) for ctx, cont in pairs]
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i][0]))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    results: list[tuple[float, bool]] = [(0.0, True)] * len(rows)
    for start in range(0, len(order), batch_size):
        chunk = order[start: start + batch_size]
        for i, scored in zip(chunk, _score_batch(model, [rows[i] for i in chunk], pad_id)):
            results[i] = scored
    return results


def _first_argmax(values: list[float]) -> int:
    return max(range(len(values)), key=lambda i: (values[i], -i))


def multiple_choice_accuracy(model, tokenizer, items: list[dict], batch_size: int = 16) -> dict[str, Any]:
    """lm-eval's ``acc`` on ``{"question", "choices", "answer"}`` items, scored in process.

    Each choice is scored as the continuation of the question (no delimiter is added: put any
    leading space in the choices); the prediction is the first choice with the highest summed
    log-prob. Returns ``accuracy``, ``n``, ``predictions`` (one index per item), ``correct``
    and ``loglikelihoods`` (per item, per choice).
    """
    pairs = [(item["question"], choice) for item in items for choice in item["choices"]]
    scored = iter(continuation_logprobs(model, tokenizer, pairs, batch_size=batch_size))
    lls = [[next(scored)[0] for _ in item["choices"]] for item in items]
    predictions = [_first_argmax(row) for row in lls]
    correct = [int(p == item["answer"]) for p, item in zip(predictions, items)]
    return {"accuracy": sum(correct) / len(items) if items else 0.0, "n": len(items), "predictions": predictions,
            "correct": correct, "loglikelihoods": lls}


# --------------------------------------------------------------------------- logic items and the lm-eval task


def logic_choice_items(n: int = 20, seed: int | None = None, suite: str = "logic") -> list[dict]:
    """Multiple-choice items from the ``logic`` suite's held-out puzzles.

    ``question`` is the record's prompt in its template (v6: ``"Q: <puzzle>\\nA:"``), ``choices``
    are the five certainty glyphs ● ◕ ◐ ◔ ○ each after the template's completion prefix (v6: a
    space, as the v6 answers are written), and ``answer`` indexes the solver's glyph. With
    ``seed=None`` the first ``n`` records in the suite's order (as ``slmlab eval logic`` takes
    them); with a seed, ``n`` records drawn by it. Each item also carries the record's ``id``.
    """
    from slmlab.data.glyphs import CERTAINTY_SCALE
    from slmlab.data.roles import load_template
    from slmlab.evaluate.suites import load_records, load_suite

    spec = load_suite(suite)
    records = load_records(spec)
    if seed is not None:
        records = random.Random(seed).sample(records, min(n, len(records)))
    items = []
    for rec in records[:n]:
        template = load_template(rec.get("format") or spec.template)
        if template.kind != "text":
            raise ValueError(f"record {rec.get('id')!r}: template {template.name!r} is not a text template")
        items.append({"id": rec["id"], "question": template.user_text(rec["input"]),
                      "choices": [template.completion_prefix + g for g in CERTAINTY_SCALE],
                      "answer": CERTAINTY_SCALE.index(rec["answer"])})
    return items


def _task_yaml(task_name: str, data_file: Path) -> str:
    # JSON is valid YAML: every string below is quoted exactly, whatever the path holds.
    config = {
        "task": task_name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data_file)}, "cache_dir": str(data_file.parent / "hf_datasets")},
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": "question",
        "doc_to_choice": "choices",
        "doc_to_target": "answer",
        "target_delimiter": "",
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
        "metadata": {"version": 1.0},
    }
    return "\n".join(f"{key}: {json.dumps(value, ensure_ascii=False)}" for key, value in config.items()) + "\n"


def write_lm_eval_task(directory: str | Path, items: list[dict], task_name: str = "slmlab_logic_mc") -> Path:
    """Write ``<task_name>.jsonl`` and ``<task_name>.yaml`` into ``directory``; returns the YAML's path.

    Load it with ``lm_eval.tasks.TaskManager(include_path=directory)``. The task's context is the
    item's ``question`` and each request's continuation is a choice as written (``target_delimiter``
    is empty, since the choices carry their own leading space), so lm-eval scores exactly the pairs
    :func:`multiple_choice_accuracy` scores. The datasets cache lives beside the data file.
    """
    directory = Path(directory).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    data_file = directory / f"{task_name}.jsonl"
    lines = [json.dumps({k: item[k] for k in ("question", "choices", "answer")} | {"id": item.get("id", str(i))},
                        ensure_ascii=False) for i, item in enumerate(items)]
    data_file.write_text("\n".join(lines) + "\n", encoding="utf-8")
    task_file = directory / f"{task_name}.yaml"
    task_file.write_text(_task_yaml(task_name, data_file), encoding="utf-8")
    return task_file
