"""The dream loop: the model's own failures on verifiable prompts become its preference data.

    round 0:  evaluate the starting model on the held-out puzzles
    round r:  sample each of `per_round` prompts `samples_per_prompt` times at temperature T
              → verify every sample with the solver's answer (the evaluation's grader)
              → triplets: a right sample (else the solver's target) over each wrong one
              → ORPO/DPO with `train_step`, batch after batch
              → evaluate on the held-out puzzles (greedy, Wilson 95% interval)
              → T for the next round from this round's failure rate (slmlab.dream.temperature)
              → checkpoint (adapter, optimizer, RNG and every round record so far), then rounds.jsonl

The run directory (``output_dir/name``) holds ``config.yaml``, ``data/`` (the recipe built
once: train split = prompts, test split = held-out), ``rounds.jsonl`` (one line per round,
deterministic: same seed → same bytes), ``timings.jsonl`` (wall-clock, not deterministic),
``rounds/round-NNN/{samples,pairs,heldout}.jsonl``, ``checkpoints/``, ``adapter/`` and
``report.html`` + ``rounds.svg``. A killed run resumes from its last finished round
(:func:`resume`): the checkpoint carries the round records, so an interrupted round is redone
exactly as it would have run.

Sampling is seeded per round (``evaluate.generate`` forks the RNG), LoRA init by ``seed``,
batch order by ``seed`` and round; nothing else draws from a random stream but LoRA dropout,
whose state the checkpoint restores.
"""

from __future__ import annotations

import hashlib
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

from slmlab.dream.config import DreamConfig, config_yaml, load_dream_config
from slmlab.dream.pairs import is_right, make_pairs
from slmlab.dream.temperature import from_config as next_temperature
from slmlab.errors import SlmlabError
from slmlab.io import read_jsonl, read_jsonl_tolerant, write_jsonl


@dataclass
class DreamResult:
    run_dir: Path
    rounds: list[dict] = field(repr=False)  # rounds.jsonl: round 0 = the starting model
    status: str = "completed"  # "completed" | "already complete"
    report: Path | None = None

    @property
    def accuracy(self) -> list[float]:
        """Held-out accuracy per round, round 0 first."""
        return [r["heldout"]["accuracy"] for r in self.rounds]


# --------------------------------------------------------------------------- public entry points


def run(config: DreamConfig | str | Path, *, resume: bool = False, on_round=None) -> DreamResult:
    """Run (or with ``resume``, continue) the dream loop; ``on_round(record)`` is called after each round."""
    config = config if isinstance(config, DreamConfig) else load_dream_config(config)
    run_dir = config.run_dir
    _claim(run_dir, config, resume)
    train_records, heldout = load_prompts(config, run_dir)
    dreamer = ServerDreamer(config) if config.server is not None else LocalDreamer(config)
    records = dreamer.restore(run_dir) if resume else None
    if records is not None and len(records) > config.rounds + 1:
        raise SlmlabError(f"{run_dir} already holds {len(records) - 1} rounds, more than rounds: {config.rounds}")
    if records is not None and len(records) == config.rounds + 1:
        return DreamResult(run_dir, records, "already complete", _finish(config, dreamer, records))
    if records is None:
        records, started = [], time.perf_counter()
        baseline = _baseline(config, dreamer, heldout, run_dir)
        _new_round(config, dreamer, run_dir, records, baseline, on_round,
                   {"eval": round(time.perf_counter() - started, 3)})
    while len(records) <= config.rounds:
        started = time.perf_counter()
        record, seconds = one_round(config, dreamer, len(records), records[-1]["next_temperature"], train_records,
                                    heldout, run_dir)
        seconds["total"] = round(time.perf_counter() - started, 3)
        _new_round(config, dreamer, run_dir, records, record, on_round, seconds)
    return DreamResult(run_dir, records, "completed", _finish(config, dreamer, records))


def resume(run_dir: str | Path, *, rounds: int | None = None, on_round=None) -> DreamResult:
    """Continue the dream run in ``run_dir`` from its last finished round (``rounds``: a new total)."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise SlmlabError(f"{run_dir}: no config.yaml, so not a dream run directory")
    config = load_dream_config(path, [f"rounds={rounds}"] if rounds is not None else None)
    # The saved config names the run by output_dir/name; the directory given here is the truth.
    config = config.model_copy(update={"output_dir": str(Path(run_dir).parent), "name": Path(run_dir).name})
    return run(config, resume=True, on_round=on_round)


# --------------------------------------------------------------------------- the run directory and prompts


def _claim(run_dir: Path, config: DreamConfig, resume: bool) -> None:
    """Write config.yaml; a directory with rounds is only continued with ``resume`` and the same settings."""
    from slmlab.io import atomic_write_text

    saved = run_dir / "config.yaml"
    started = any((run_dir / f).exists() for f in ("rounds.jsonl", "checkpoints", "server_state.json"))
    if started and not resume:
        raise SlmlabError(f"{run_dir} already holds a dream run: continue it with `slmlab dream --resume {run_dir}` "
                          "(or dream.resume), or give another `name`")
    if resume and saved.is_file():
        before = load_dream_config(saved).model_dump(mode="json")
        now = config.model_dump(mode="json")
        changed = [k for k in now if k not in ("rounds", "output_dir", "name") and before.get(k) != now[k]]
        if changed:
            raise SlmlabError(f"{run_dir}: resuming with other settings than the run started with "
                              f"({', '.join(changed)}); only `rounds` may change")
    atomic_write_text(saved, config_yaml(config))


def load_prompts(config: DreamConfig, run_dir: Path) -> tuple[list[dict], list[dict]]:
    """(training-split records, the first ``eval.n`` held-out records) of the prompts recipe, built once."""
    from slmlab.data.recipes import generate_dataset

    data = run_dir / "data"
    if not (data / "manifest.json").is_file():
        generate_dataset(config.prompts.recipe, data, count=config.prompts.count, seed=config.seed)
    train, test = read_jsonl(data / "train.jsonl"), read_jsonl(data / "test.jsonl")
    for rec in train[:1] + test[:1]:
        is_right(rec, "")  # raises, naming the record, when the recipe has no solver answers
    if len(test) < config.eval.n:
        raise SlmlabError(f"eval.n is {config.eval.n} but the recipe's held-out split has {len(test)} puzzles; "
                          f"raise prompts.count (now {config.prompts.count}) or lower eval.n")
    if not train:
        raise SlmlabError(f"the recipe's training split is empty; raise prompts.count (now {config.prompts.count})")
    return train, test[: config.eval.n]


def round_prompts(train: list[dict], round_no: int, per_round: int) -> list[dict]:
    """Round ``round_no``'s prompts: the next ``per_round`` training records, wrapping around."""
    start = (round_no - 1) * per_round
    return [train[(start + i) % len(train)] for i in range(per_round)]


def derived_seed(seed: int, *parts: object) -> int:
    """A 31-bit seed from the run seed and a purpose (stable across runs and machines)."""
    text = ":".join(str(p) for p in (seed, *parts))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big") & 0x7FFFFFFF


# --------------------------------------------------------------------------- one round


def one_round(config: DreamConfig, dreamer, round_no: int, temperature: float, train: list[dict],
              heldout: list[dict], run_dir: Path) -> tuple[dict, dict]:
    """Sample → verify → pairs → train → evaluate; returns (the round's record, its timings)."""
    seconds: dict[str, float] = {}
    clock = time.perf_counter()
    prompts = round_prompts(train, round_no, config.prompts.per_round)
    k = config.sampling.samples_per_prompt
    completions = dreamer.sample(prompts, k, temperature, derived_seed(config.seed, "sample", round_no))
    seconds["sample"] = round(time.perf_counter() - clock, 3)

    samples, pairs, failures, all_right, all_wrong = [], [], 0, 0, 0
    for rec, texts in zip(prompts, completions):
        verified = [is_right(rec, t) for t in texts]
        failures += verified.count(False)
        all_right += all(verified)
        all_wrong += not any(verified)
        samples.append({"id": rec.get("id"), "input": rec["input"], "answer": rec["answer"], "samples": texts,
                        "verified": verified})
        pairs += make_pairs(rec, texts, per_prompt=config.pairs.per_prompt, default_format=config.prompts.format)
    where = run_dir / "rounds" / f"round-{round_no:03d}"
    write_jsonl(where / "samples.jsonl", samples)
    write_jsonl(where / "pairs.jsonl", pairs)

    clock = time.perf_counter()
    trained = dreamer.train(pairs, round_no)
    seconds["train"] = round(time.perf_counter() - clock, 3)
    clock = time.perf_counter()
    heldout_result = evaluate_heldout(dreamer, heldout, where)
    seconds["eval"] = round(time.perf_counter() - clock, 3)

    total = len(prompts) * k
    failure_rate = failures / total
    record = {
        "round": round_no,
        "temperature": temperature,
        "prompts": len(prompts),
        "samples": total,
        "failures": failures,
        "failure_rate": failure_rate,
        "prompts_all_right": all_right,
        "prompts_all_wrong": all_wrong,
        "pairs": len(pairs),
        "pairs_chosen_by_model": sum(p["chosen_source"] == "model" for p in pairs),
        **trained,
        "heldout": heldout_result,
        "next_temperature": next_temperature(temperature, failure_rate, config.temperature),
    }
    return record, seconds


def evaluate_heldout(dreamer, heldout: list[dict], where: Path) -> dict:
    """Greedy answers to the held-out puzzles: accuracy with its Wilson 95% interval; samples to ``where``."""
    from slmlab.compare.stats import wilson_interval
    from slmlab.data.glyphs import first_glyph

    texts = dreamer.answer(heldout)
    rows = [{"id": rec.get("id"), "input": rec["input"], "answer": rec["answer"], "generation": text,
             "correct": is_right(rec, text)} for rec, text in zip(heldout, texts)]
    write_jsonl(where / "heldout.jsonl", rows)
    n, correct = len(rows), sum(r["correct"] for r in rows)
    lo, hi = wilson_interval(correct, n)
    return {"n": n, "correct": correct, "accuracy": correct / n, "ci95": [lo, hi],
            "no_glyph": sum(first_glyph(r["generation"]) is None for r in rows)}


def _baseline(config: DreamConfig, dreamer, heldout: list[dict], run_dir: Path) -> dict:
    result = evaluate_heldout(dreamer, heldout, run_dir / "rounds" / "round-000")
    return {"round": 0, "heldout": result, "step": dreamer.step, "next_temperature": config.temperature.initial}


def _new_round(config: DreamConfig, dreamer, run_dir: Path, records: list[dict], record: dict, on_round,
               seconds: dict | None = None) -> None:
    """Checkpoint first (it carries every record), then rounds.jsonl, timings and the report."""
    from slmlab.dream.report import write_dream_report

    record = {**record, "step": dreamer.step}
    records.append(record)
    dreamer.save(run_dir, records)
    write_jsonl(run_dir / "rounds.jsonl", records)
    timings_path = run_dir / "timings.jsonl"
    timings = [t for t in read_jsonl_tolerant(timings_path) if t.get("round", 0) < record["round"]] \
        if timings_path.exists() else []
    write_jsonl(timings_path, timings + [{"round": record["round"], "seconds": seconds or {}}])
    write_dream_report(run_dir, records, config)
    if on_round is not None:
        on_round(record)


def _finish(config: DreamConfig, dreamer, records: list[dict]) -> Path:
    from slmlab.dream.report import write_dream_report
    from slmlab.runs import record_run

    run_dir = config.run_dir
    dreamer.finish(run_dir)
    last = records[-1]
    losses = [r["loss"] for r in records if r.get("loss") is not None]
    record_run(run_dir, name=config.name, status="completed", model=config.model,
               objective=f"dream-{config.objective.kind}", config_yaml=config_yaml(config), step=last["step"],
               final_loss=losses[-1] if losses else None,
               summary={"rounds": len(records) - 1, "heldout_accuracy": [r["heldout"]["accuracy"] for r in records]})
    return write_dream_report(run_dir, records, config)


# --------------------------------------------------------------------------- local model


class LocalDreamer:
    """A model in this process: ``evaluate.generate`` for sampling, the training core for steps."""

    def __init__(self, config: DreamConfig):
        import torch

        from slmlab.models import load
        from slmlab.train.objectives import build_objective
        from slmlab.train.state import new_state

        self.config = config
        torch.manual_seed(config.seed)  # the LoRA init, and dropout's stream (saved with every checkpoint)
        random.seed(config.seed)
        model, self.tokenizer = load(config.model, seed=config.seed)
        a = config.adapter
        if a.kind == "lora":
            from peft import LoraConfig, get_peft_model

            model = get_peft_model(model, LoraConfig(r=a.r, lora_alpha=a.alpha, lora_dropout=a.dropout,
                                                     target_modules=a.target_modules, layers_to_transform=a.layers,
                                                     task_type="CAUSAL_LM"))
        else:
            for p in model.parameters():
                p.requires_grad_(True)
        self.model = model
        o = config.optimizer
        self.state = new_state(model, optimizer=o.name, lr=o.lr, weight_decay=o.weight_decay, schedule="constant",
                               max_grad_norm=config.training.max_grad_norm, optimizer_kwargs=o.kwargs)
        self.objective = build_objective(config.objective)
        tok = self.tokenizer
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    @property
    def step(self) -> int:
        return self.state.step

    def _prompts(self, records: list[dict]) -> list[str]:
        return render_prompts(records, self.config.prompts.format, self.tokenizer)

    def sample(self, records: list[dict], k: int, temperature: float, seed: int) -> list[list[str]]:
        from slmlab.evaluate.generate import generate

        s = self.config.sampling
        prompts = [p for p in self._prompts(records) for _ in range(k)]
        self.model.eval()
        out = generate(self.model, self.tokenizer, prompts, max_new_tokens=s.max_new_tokens, temperature=temperature,
                       top_p=s.top_p, seed=seed, stop=s.stop, batch_size=s.batch_size * k)
        texts = [g.text for g in out.generations]
        return [texts[i * k:(i + 1) * k] for i in range(len(records))]

    def answer(self, records: list[dict]) -> list[str]:
        from slmlab.evaluate.generate import generate

        e = self.config.eval
        self.model.eval()
        out = generate(self.model, self.tokenizer, self._prompts(records), max_new_tokens=e.max_new_tokens,
                       stop=e.stop, batch_size=e.batch_size)
        return [g.text for g in out.generations]

    def train(self, pairs: list[dict], round_no: int) -> dict:
        """ORPO/DPO over the round's pairs: ``epochs`` seeded passes of ``batch_size`` pairs per ``train_step``.

        A step whose loss or gradient norm is not finite is skipped (its gradient dropped), as the
        server's online training does.
        """
        from slmlab.train.data import complete_units, encode_records, units
        from slmlab.train.step import (
            StepBatch,
            forward_backward,
            optimizer_step,
            skip_step,
        )

        c = self.config
        encoded, _ = encode_records(pairs, "preference (text)", self.objective, c.prompts.format, self.tokenizer,
                                    c.pairs.max_length)
        unit_list = units(complete_units(encoded, 2), 2)
        losses, skipped = [], 0
        self.model.train()
        for epoch in range(c.training.epochs):
            order = list(range(len(unit_list)))
            random.Random(derived_seed(c.seed, "train", round_no, epoch)).shuffle(order)
            for i in range(0, len(order), c.training.batch_size):
                chunk = [unit_list[j] for j in order[i:i + c.training.batch_size]]
                batch = StepBatch.from_units([chunk], self.objective, max_length=c.pairs.max_length, pad_id=self.pad_id)
                result = forward_backward(self.state, batch.to(self.state.device), self.objective)
                finite = math.isfinite(result.loss) and (result.grad_norm is None or math.isfinite(result.grad_norm))
                if finite:
                    optimizer_step(self.state, result)
                else:
                    skip_step(self.state, result)
                    skipped += 1
                losses.append(result.loss)
        self.model.eval()
        return train_summary(losses, len(pairs) - len(unit_list), skipped)

    def save(self, run_dir: Path, records: list[dict]) -> None:
        from slmlab.train.checkpoint import save_checkpoint

        save_checkpoint(run_dir, self.state, info={"round": records[-1]["round"], "rounds": records}, keep=2)

    def restore(self, run_dir: Path) -> list[dict] | None:
        from slmlab.train.checkpoint import latest_checkpoint, load_checkpoint

        path = latest_checkpoint(run_dir)
        if path is None:
            return None
        return load_checkpoint(path, self.state)["rounds"]

    def finish(self, run_dir: Path) -> None:
        from slmlab.train.record import save_final

        save_final(run_dir, self.model, self.tokenizer, self.config.adapter.kind)


def render_prompts(records: list[dict], default_format: str, tokenizer) -> list[str]:
    """Each record's generation prompt under its template (``role``/``format``, else ``default_format``)."""
    from slmlab.data.roles import load_template, render_prompt

    cache: dict[str, object] = {}
    out = []
    for rec in records:
        name = rec.get("role") or rec.get("format") or default_format
        if name not in cache:
            cache[name] = load_template(name)
        out.append(render_prompt(rec["input"], cache[name], tokenizer))
    return out


def train_summary(losses: list[float], dropped: int, skipped: int) -> dict:
    finite = [x for x in losses if math.isfinite(x)]
    return {"pairs_dropped": dropped, "steps": len(losses), "steps_skipped": skipped,
            "loss": sum(finite) / len(finite) if finite else None,
            "loss_first": losses[0] if finite else None, "loss_last": losses[-1] if finite else None}


# --------------------------------------------------------------------------- a running server


class ServerDreamer:
    """Sampling, training and evaluation through a running ``slmlab serve`` (``server:`` in the config).

    ``/v1/completions`` samples (``n`` per prompt, ``seed``) and answers greedily; ``/train`` takes
    each batch of pairs as text (prompt, chosen, rejected: the server trains ORPO) and is polled
    until done. The server owns the weights: resuming continues the *records* from the last
    finished round, but the server's adapter is not rewound, so bit-exact resumes are the local
    backend's alone. Until the first ``/train`` the served adapter does not exist, so round 0
    and round 1 sample the base model.
    """

    def __init__(self, config: DreamConfig):
        import httpx

        from slmlab.models import load_tokenizer

        self.config = config
        s = config.server
        headers = {}
        if s.api_key_file is not None:
            headers["Authorization"] = "Bearer " + Path(s.api_key_file).read_text(encoding="utf-8").strip()
        self.client = httpx.Client(base_url=s.url, timeout=s.timeout, headers=headers)
        self.tokenizer = load_tokenizer(config.model)
        models = [m["id"] for m in self._get("/v1/models")["data"]]
        self.base = models[0]
        self.trained = s.adapter in models
        self.step = 0

    def _get(self, path: str) -> dict:
        return self._check(self.client.get(path), path)

    def _post(self, path: str, body: dict) -> dict:
        return self._check(self.client.post(path, json=body), path)

    @staticmethod
    def _check(response, path: str) -> dict:
        if response.status_code >= 400:
            try:
                message = response.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):  # not slmlab's JSON error shape
                message = response.text[:300]
            raise SlmlabError(f"server {path}: HTTP {response.status_code}: {message}")
        return response.json()

    @property
    def _model(self) -> str:
        return self.config.server.adapter if self.trained else self.base

    def _complete(self, records: list[dict], n: int, temperature: float, max_tokens: int, seed: int,
                  stop: list[str]) -> list[str]:
        prompts = render_prompts(records, self.config.prompts.format, self.tokenizer)
        body = {"model": self._model, "prompt": prompts, "n": n, "temperature": temperature, "seed": seed,
                "max_tokens": max_tokens, "stop": stop, "top_p": self.config.sampling.top_p}
        choices = sorted(self._post("/v1/completions", body)["choices"], key=lambda c: c["index"])
        return [c["text"] for c in choices]

    def sample(self, records: list[dict], k: int, temperature: float, seed: int) -> list[list[str]]:
        texts = self._complete(records, k, temperature, self.config.sampling.max_new_tokens, seed,
                               self.config.sampling.stop)
        return [texts[i * k:(i + 1) * k] for i in range(len(records))]

    def answer(self, records: list[dict]) -> list[str]:
        return self._complete(records, 1, 0.0, self.config.eval.max_new_tokens, 0, self.config.eval.stop)

    def train(self, pairs: list[dict], round_no: int) -> dict:
        from slmlab.data.roles import load_template, render

        c = self.config
        losses, skipped = [], 0
        triples = []
        for p in pairs:
            template = load_template(p["format"])
            prompt, chosen = render({"input": p["prompt"], "output": p["chosen"]}, template, self.tokenizer)
            _, rejected = render({"input": p["prompt"], "output": p["rejected"]}, template, self.tokenizer)
            triples.append((prompt, chosen, rejected))
        for epoch in range(c.training.epochs):
            order = list(range(len(triples)))
            random.Random(derived_seed(c.seed, "train", round_no, epoch)).shuffle(order)
            for i in range(0, len(order), c.training.batch_size):
                chunk = [triples[j] for j in order[i:i + c.training.batch_size]]
                job = self._post("/train", {"model": c.server.adapter, "context": [t[0] for t in chunk],
                                            "continuation": [t[1] for t in chunk],
                                            "rejected": [t[2] for t in chunk], "steps": 1})
                job = self._wait(job)
                self.trained = True
                losses += [x if x is not None else float("nan") for x in job.get("losses", [])]
                skipped += len(job.get("skipped_steps", []))
                self.step += job.get("applied", 0)
        return train_summary(losses, 0, skipped)

    def _wait(self, job: dict) -> dict:
        deadline = time.monotonic() + self.config.server.timeout
        while job.get("status") in ("queued", "running"):
            if time.monotonic() > deadline:
                raise SlmlabError(f"server /train job {job.get('id')} still {job['status']} after "
                                  f"{self.config.server.timeout:.0f}s")
            time.sleep(0.2)
            job = self._get(f"/train/{job['id']}")
        if job.get("status") == "failed":
            raise SlmlabError(f"server /train job {job.get('id')} failed: {job.get('error')}")
        return job

    def save(self, run_dir: Path, records: list[dict]) -> None:
        from slmlab.io import write_json

        write_json(run_dir / "server_state.json", {"round": records[-1]["round"], "step": self.step, "rounds": records})

    def restore(self, run_dir: Path) -> list[dict] | None:
        from slmlab.io import read_json

        path = run_dir / "server_state.json"
        if not path.is_file():
            return None
        state = read_json(path)
        self.step = state["step"]
        return state["rounds"]

    def finish(self, run_dir: Path) -> None:
        """The weights live on the server (``POST /checkpoint`` writes them to its state dir)."""


__all__ = ["DreamResult", "LocalDreamer", "ServerDreamer", "derived_seed", "evaluate_heldout", "load_prompts",
           "one_round", "render_prompts", "resume", "round_prompts", "run"]
