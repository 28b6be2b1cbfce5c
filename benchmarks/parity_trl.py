"""Loss parity with TRL 1.16: slmlab's SFT, DPO and ORPO losses against TRL's own trainers on one fixed batch.

    .venv/bin/python benchmarks/parity_trl.py                        # tiny-random, a few seconds
    .venv/bin/python benchmarks/parity_trl.py --model smollm2-135m   # the real model
    .venv/bin/python benchmarks/parity_trl.py --strict               # convention differences fail too

Needs `pip install trl==1.16.0` (benchmark-only dependency: `pip install -e '.[bench]'`).

What is compared
----------------
For each objective a real TRL trainer is built (``SFTTrainer``, ``DPOTrainer``,
``trl.experimental.orpo.ORPOTrainer``; CPU, float32, ``report_to="none"``, output in a
temporary directory, never trained) on a 4-5 example dataset of *strings*, with a fresh
LoRA (r=8, all linear layers) made by TRL from ``peft_config``. The LoRA's ``lora_B``
weights are then overwritten with a seeded normal, so the adapter changes the model and,
for DPO, policy ≠ reference. One batch is taken from ``trainer.get_train_dataloader()``
(TRL's tokenization and collator, the whole dataset in one batch) and the TRL loss is
``trainer.compute_loss(model, batch)``. The slmlab loss is computed on the *same model
object* (``SupervisedLM(trainer.model)``, eval mode, no grad) from the *same strings*,
through slmlab's own path: ``records_to_pairs`` / ``preference_pairs`` (v6 template)
→ ``encode_pairs`` → ``units`` → ``pack`` + ``collate`` → ``sft_loss`` / ``dpo_loss`` /
``orpo_loss``, loss = ``total / normaliser``. Both the packed batch (slmlab's default) and
one-example-per-row batches are checked.

Before any loss is compared, the token ids and the supervised positions of every example
in TRL's batch are checked to be identical to slmlab's (as multisets: TRL's sampler
shuffles). A row whose inputs differ FAILs with "inputs differ".

Conventions (TRL 1.16 source read, then checked numerically here)
-----------------------------------------------------------------
* SFT (``SFTTrainer.compute_loss``, ``completion_only_loss`` on for prompt/completion
  data): sum of completion-token NLL / number of completion tokens in the batch
  (``num_items_in_batch`` when the Trainer passes it, i.e. over the accumulated step).
  Same as slmlab (token mean over the step). TRL appends EOS to completions that do not
  end with it; slmlab's v6 completions already do, so nothing is appended.
* DPO (``DPOTrainer``, loss_type sigmoid, β = ``beta`` = 0.1): log-probs summed over
  completion tokens, mean over pairs of −log σ(β·Δ). Same as slmlab. With a PEFT model
  *created by TRL* from ``peft_config`` the reference is the model with adapters
  disabled (slmlab's reference too). Note: if a PeftModel with an existing adapter is
  passed instead, TRL 1.16 copies it into a frozen "ref" adapter and uses *that* as
  reference (so policy = reference at step 0); slmlab always uses the adapter-disabled
  base, which is the same thing only for a freshly initialised adapter — and slmlab
  only ever starts from a fresh adapter.
* ORPO (``ORPOTrainer``; TRL calls λ ``beta``, default 0.1): the odds-ratio term uses
  per-token *mean* log-probs of the completions and −log σ(log-odds), mean over pairs —
  same as slmlab (TRL uses a stabler ``log1mexp``; identical to float precision here).
  The NLL term is **different**: TRL computes ``CrossEntropyLoss`` over the chosen
  sequences' *prompt and completion* tokens (every non-padding token after the first),
  averaged over all such tokens in the batch; slmlab averages the NLL of the chosen
  *completion* tokens per pair, then over pairs. So the ORPO totals differ; the script
  reports the slmlab value and, gated, the same total rebuilt from slmlab's log-probs in
  TRL's NLL convention, plus a breakdown of the NLL term under each convention.
  Also: TRL's ORPO prepends BOS (``<|im_start|>`` for SmolLM2) to any prompt that does not
  start with it; v6 prompts do not, so the ORPO prompts here start with the BOS string
  on *both* sides (SFT/DPO in TRL add no BOS and use the v6 strings unchanged).
* Chat-format data (``--format chat``): SmolLM2's chat completions end with
  ``<|im_end|>\\n``, not with EOS, so all three TRL trainers append a second
  ``<|im_end|>``; slmlab does not. The token check then fails: a data convention, not a
  loss bug. The default v6 format avoids it.

A row PASSes when |slmlab − TRL| ≤ 1e-4. Rows marked "convention" compare quantities
whose definitions differ; they show DIFF and do not set the exit code unless ``--strict``.
The exit code is non-zero if any gated row fails.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import warnings
from collections import Counter
from dataclasses import dataclass

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

TOL = 1e-4
BETA = 0.1  # DPO β
LAM = 0.1  # ORPO λ (TRL's ORPOConfig.beta)
SEED = 0
LORA_B_STD = 0.05
MAX_LENGTH = 512
TRL_VERSION = "1.16.0"

SFT_RECORDS = [
    {"input": "What is 2 + 3?", "output": "5"},
    {"input": "Name the capital of France.", "output": "Paris is the capital of France."},
    {"input": "Sort the letters: c a b", "output": "a b c"},
    {"input": "Is 7 a prime number? Answer yes or no, then explain briefly.", "output": "yes, 7 has no divisors but 1 and 7"},
    {"input": "Reverse the word 'stone'.", "output": "enots"},
]

# Chosen and rejected of different lengths, so per-pair and per-token means differ.
PREF_RECORDS = [
    {"prompt": "What is 2 + 3?", "chosen": "5", "rejected": "6, because two and three make six"},
    {"prompt": "Name the capital of France.", "chosen": "Paris", "rejected": "The capital of France is Lyon."},
    {"prompt": "Is 7 a prime number? Answer yes or no.", "chosen": "yes, 7 is prime", "rejected": "no"},
    {"prompt": "Sort the letters: c a b", "chosen": "a b c", "rejected": "c b a"},
]


@dataclass
class Row:
    objective: str
    batch: str  # how slmlab batched it: packed / padded
    slmlab: float
    trl: float
    inputs_equal: bool = True
    gated: bool = True  # False: the two quantities follow different conventions

    @property
    def diff(self) -> float:
        return abs(self.slmlab - self.trl)

    def status(self, strict: bool) -> str:
        if not self.inputs_equal:
            return "FAIL (inputs differ)"
        if self.diff <= TOL:
            return "PASS"
        return "FAIL" if (self.gated or strict) else "DIFF (convention)"

    def failed(self, strict: bool) -> bool:
        return self.status(strict).startswith("FAIL")


# --------------------------------------------------------------------------- shared setup


def training_args(cls, out: str, batch_size: int, **extra):
    return cls(
        output_dir=out, use_cpu=True, report_to="none", bf16=False, fp16=False, seed=SEED, data_seed=SEED,
        per_device_train_batch_size=batch_size, dataloader_num_workers=0, save_strategy="no",
        gradient_checkpointing=False, max_length=MAX_LENGTH, **extra,
    )


def lora_config():
    from peft import LoraConfig

    return LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")


def prepare_model(trainer):
    """Seeded non-zero lora_B (policy ≠ base), eval mode; returns the model both sides use."""
    import torch

    model = trainer.accelerator.unwrap_model(trainer.model)
    gen = torch.Generator().manual_seed(SEED)
    n = 0
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float32).to(p.dtype) * LORA_B_STD)
                n += 1
    if n == 0:
        raise SystemExit("no lora_B parameters found: TRL did not wrap the model with the LoRA")
    model.eval()
    return model


def trl_batch(trainer) -> dict:
    batch = next(iter(trainer.get_train_dataloader()))
    return trainer._prepare_inputs(batch)


def slmlab_batch(units, packing: bool, pad_id: int) -> dict:
    from slmlab.train.data import make_batch

    return make_batch(units, MAX_LENGTH, packing, pad_id)


def example_key(ids: list[int], supervised_positions: list[int]) -> tuple:
    """An example as (token ids, positions whose token is supervised)."""
    return tuple(ids), tuple(supervised_positions)


def slmlab_key(e) -> tuple:
    from slmlab.train.batching import IGNORE

    # targets[t] is the token at t + 1
    return example_key(e.ids, [t + 1 for t, y in enumerate(e.targets) if y != IGNORE])


def trl_row_key(ids, keep, supervised) -> tuple:
    """ids/keep/supervised: one row of input ids, its non-padding mask, its supervised mask."""
    keep = keep.bool()
    row_ids = ids[keep].tolist()
    sup = supervised[keep].bool().nonzero().flatten().tolist()
    return example_key(row_ids, sup)


def fmt_pref_pairs(records, fmt: str, tok, bos_prefix: bool):
    """slmlab's preference rendering: pair k = examples 2k (prompt, chosen), 2k+1 (prompt, rejected)."""
    from slmlab.train.data import preference_pairs

    pairs = preference_pairs(records, fmt, tok, "parity")
    if bos_prefix:
        pairs = [(tok.bos_token + p, c) for p, c in pairs]
    trl_rows = [{"prompt": pairs[2 * k][0], "chosen": pairs[2 * k][1], "rejected": pairs[2 * k + 1][1]}
                for k in range(len(pairs) // 2)]
    assert all(pairs[2 * k][0] == pairs[2 * k + 1][0] for k in range(len(pairs) // 2))
    return pairs, trl_rows


def pref_examples(pairs, tok):
    from slmlab.train.batching import encode_pairs
    from slmlab.train.data import complete_units, units

    examples, _ = encode_pairs(pairs, tok, MAX_LENGTH)
    examples = complete_units(examples, 2)
    if len(examples) != len(pairs):
        raise SystemExit("an example was dropped by slmlab's encoding; raise MAX_LENGTH")
    return examples, units(examples, 2)


# --------------------------------------------------------------------------- SFT


def run_sft(spec: str, fmt: str, work: str, packings: list[bool]) -> list[Row]:
    import torch
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from slmlab.models import load
    from slmlab.train.batching import encode_pairs
    from slmlab.train.data import records_to_pairs, units
    from slmlab.train.objectives import SupervisedLM, sft_loss

    base, tok = load(spec, seed=SEED)
    pairs = records_to_pairs(SFT_RECORDS, fmt, tok, "parity")
    ds = Dataset.from_list([{"prompt": p, "completion": c} for p, c in pairs])
    args = training_args(SFTConfig, os.path.join(work, "sft"), len(pairs), completion_only_loss=True, packing=False,
                         padding_free=False)
    trainer = SFTTrainer(model=base, args=args, train_dataset=ds, processing_class=tok, peft_config=lora_config())
    model = prepare_model(trainer)
    batch = trl_batch(trainer)
    with torch.no_grad():
        trl_loss = trainer.compute_loss(model, dict(batch)).item()

    examples, _ = encode_pairs(pairs, tok, MAX_LENGTH)
    trl_keys = Counter(trl_row_key(batch["input_ids"][i], batch["attention_mask"][i], batch["labels"][i] != -100)
                       for i in range(batch["input_ids"].shape[0]))
    same = trl_keys == Counter(slmlab_key(e) for e in examples)
    lm = SupervisedLM(model).eval()
    rows = []
    for packing in packings:
        with torch.no_grad():
            parts = sft_loss(lm, slmlab_batch(units(examples, 1), packing, tok.pad_token_id))
        rows.append(Row("sft", "packed" if packing else "padded", parts.total.item() / parts.normaliser, trl_loss, same))
    return rows


# --------------------------------------------------------------------------- DPO


def run_dpo(spec: str, fmt: str, work: str, packings: list[bool]) -> tuple[list[Row], str]:
    import torch
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    from slmlab.models import load
    from slmlab.train.objectives import SupervisedLM, dpo_loss, per_example_sums

    base, tok = load(spec, seed=SEED)
    pairs, trl_rows = fmt_pref_pairs(PREF_RECORDS, fmt, tok, bos_prefix=False)
    args = training_args(DPOConfig, os.path.join(work, "dpo"), len(trl_rows), beta=BETA, loss_type=["sigmoid"],
                         precompute_ref_log_probs=False)
    trainer = DPOTrainer(model=base, args=args, train_dataset=Dataset.from_list(trl_rows), processing_class=tok,
                         peft_config=lora_config())
    model = prepare_model(trainer)
    batch = trl_batch(trainer)
    with torch.no_grad():
        trl_loss = trainer.compute_loss(model, dict(batch)).item()

    examples, units = pref_examples(pairs, tok)
    n = batch["input_ids"].shape[0] // 2
    keys = [trl_row_key(batch["input_ids"][i], batch["attention_mask"][i], batch["completion_mask"][i])
            for i in range(2 * n)]
    trl_pairs = Counter((keys[i], keys[n + i]) for i in range(n))
    same = trl_pairs == Counter((slmlab_key(c), slmlab_key(r)) for c, r in units)

    lm = SupervisedLM(model).eval()
    rows, note = [], ""
    for packing in packings:
        b = slmlab_batch(units, packing, tok.pad_token_id)
        with torch.no_grad():
            parts = dpo_loss(lm, b, beta=BETA)
            if not note:  # show that the adapter matters: policy ≠ reference
                _, pol, _ = per_example_sums(lm(b["input_ids"], b["position_ids"], b["targets"]), b)
                _, ref, _ = per_example_sums(lm(b["input_ids"], b["position_ids"], b["targets"], reference=True), b)
                note = f"DPO policy vs reference: mean |log π − log π_ref| per completion = {(pol - ref).abs().mean():.4f}"
        rows.append(Row("dpo", "packed" if packing else "padded", parts.total.item() / parts.normaliser, trl_loss, same))
    return rows, note


# --------------------------------------------------------------------------- ORPO


def run_orpo(spec: str, fmt: str, work: str, packings: list[bool]) -> tuple[list[Row], list[str]]:
    import torch
    from datasets import Dataset
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    from slmlab.models import load
    from slmlab.train.batching import IGNORE, Encoded, collate, pack
    from slmlab.train.objectives import SupervisedLM, chosen_rejected, orpo_loss, per_example_sums

    base, tok = load(spec, seed=SEED)
    # TRL's ORPO prepends BOS to prompts that lack it; give both sides the BOS-prefixed prompt.
    pairs, trl_rows = fmt_pref_pairs(PREF_RECORDS, fmt, tok, bos_prefix=True)
    args = training_args(ORPOConfig, os.path.join(work, "orpo"), len(trl_rows), beta=LAM, remove_unused_columns=False)
    trainer = ORPOTrainer(model=base, args=args, train_dataset=Dataset.from_list(trl_rows), processing_class=tok,
                          peft_config=lora_config())
    model = prepare_model(trainer)
    batch = trl_batch(trainer)
    with torch.no_grad():
        trl_loss = trainer.compute_loss(model, dict(batch)).item()
        # TRL's own pieces: NLL term and the odds-ratio term (its 4th output is mean log σ(log-odds)).
        chosen_logps, rejected_logps, _, _, trl_nll = trainer.concatenated_forward(model, dict(batch))[:5]
        _, _, _, mean_log_sigmoid, _ = trainer.odds_ratio_loss(chosen_logps, rejected_logps)
    trl_nll, trl_or = trl_nll.item(), -mean_log_sigmoid.item()

    examples, units = pref_examples(pairs, tok)
    n = batch["chosen_input_ids"].shape[0]
    trl_pairs = Counter(
        (trl_row_key(batch["chosen_input_ids"][i], batch["chosen_attention_mask"][i], batch["chosen_labels"][i] != -100),
         trl_row_key(batch["rejected_input_ids"][i], batch["rejected_attention_mask"][i], batch["rejected_labels"][i] != -100))
        for i in range(n))
    same = trl_pairs == Counter((slmlab_key(c), slmlab_key(r)) for c, r in units)

    lm = SupervisedLM(model).eval()
    rows: list[Row] = []
    breakdown: list[str] = []
    for packing in packings:
        how = "packed" if packing else "padded"
        b = slmlab_batch(units, packing, tok.pad_token_id)
        # The chosen sequences with every token after the first supervised: TRL's NLL convention.
        full = [Encoded(c.index, c.ids, c.ids[1:] + [IGNORE]) for c, _ in units]
        fb = collate(pack(full, MAX_LENGTH, packing), tok.pad_token_id)
        with torch.no_grad():
            parts = orpo_loss(lm, b, lam=LAM)
            ids, sums, counts = per_example_sums(lm(b["input_ids"], b["position_ids"], b["targets"]), b)
            c_sum, _ = chosen_rejected(ids, sums)
            c_cnt, _ = chosen_rejected(ids, counts)
            nll_full = -lm(fb["input_ids"], fb["position_ids"], fb["targets"]).mean().item()
        pairs_n = parts.logs["pairs"]
        nll_slmlab = parts.logs["nll_sum"] / pairs_n  # per-pair mean of per-token completion NLL
        nll_tokens = -(c_sum.sum() / c_cnt.sum()).item()  # completion tokens, batch token mean
        or_term = parts.logs["or_sum"] / pairs_n
        rows += [
            Row("orpo odds-ratio term", how, or_term, trl_or, same),
            Row("orpo, TRL's NLL convention", how, nll_full + LAM * or_term, trl_loss, same),
            Row("orpo (slmlab convention)", how, parts.total.item() / parts.normaliser, trl_loss, same, gated=False),
        ]
        if not breakdown:
            breakdown = [
                "ORPO NLL term of the chosen completions under each convention (same batch, same weights):",
                f"  slmlab: completion tokens, mean per pair, then over pairs      {nll_slmlab:.6f}",
                f"  completion tokens, token mean over the batch                   {nll_tokens:.6f}",
                f"  prompt + completion tokens, token mean over the batch (slmlab) {nll_full:.6f}",
                f"  TRL ORPOTrainer.concatenated_forward chosen_nll_loss           {trl_nll:.6f}"
                f"   (|diff| to the line above {abs(nll_full - trl_nll):.2e})",
            ]
    return rows, breakdown


# --------------------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny-random", help="slmlab model spec (default tiny-random; try smollm2-135m)")
    ap.add_argument("--format", default="v6", help="slmlab prompt template for the strings (default v6)")
    ap.add_argument("--packing", choices=["both", "on", "off"], default="both", help="slmlab batches: packed, padded or both")
    ap.add_argument("--strict", action="store_true", help="also fail on rows whose conventions differ")
    args = ap.parse_args()

    warnings.filterwarnings("ignore")
    import datasets
    import torch
    import trl
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    if trl.__version__ != TRL_VERSION:
        print(f"warning: TRL {trl.__version__} installed; this parity check was written against {TRL_VERSION}", file=sys.stderr)
    packings = {"both": [True, False], "on": [True], "off": [False]}[args.packing]

    with tempfile.TemporaryDirectory(prefix="slmlab-parity-") as work:
        rows = run_sft(args.model, args.format, work, packings)
        dpo_rows, dpo_note = run_dpo(args.model, args.format, work, packings)
        orpo_rows, breakdown = run_orpo(args.model, args.format, work, packings)
    rows += dpo_rows + orpo_rows

    print(f"\nslmlab vs TRL {trl.__version__} on one fixed batch: model {args.model}, format {args.format}, "
          f"β={BETA}, λ={LAM}, float32 CPU, tolerance {TOL:g}")
    header = f"{'objective':30} {'slmlab batch':12} {'slmlab loss':>12} {'TRL loss':>12} {'|diff|':>10}  result"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r.objective:30} {r.batch:12} {r.slmlab:12.6f} {r.trl:12.6f} {r.diff:10.2e}  {r.status(args.strict)}")
    print()
    print(dpo_note)
    print("\n".join(breakdown))
    failed = [r for r in rows if r.failed(args.strict)]
    print(f"\n{len(rows) - len(failed)}/{len(rows)} rows pass" + (f"; FAILED: {', '.join(sorted({r.objective for r in failed}))}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
