"""``slmlab trio train``: one LoRA adapter per role on one base model.

    OUT/
      data/recipe/{train,test}.jsonl, manifest.json   the recipe, generated as `slmlab data generate` would
      data/<role>.jsonl                                that role's training records: the recipe's records
                                                       with this `role` plus generated trio examples
      <role>/                                          a normal run directory (config.yaml, metrics.jsonl,
                                                       results.json, adapter/, …) from slmlab.train.loop.run
      trio.json                                        {"model", "recipe", "roles": {role: {"adapter", …}}}

``trio.json`` is what ``slmlab trio run --adapters OUT`` reads. Every run is an ordinary
``slmlab train`` run (same loop, same record), so ``slmlab runs`` lists them and their
reports, checkpoints and resume work as usual.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from slmlab.errors import SlmlabError
from slmlab.io import atomic_write_text, write_jsonl
from slmlab.trio.pipeline import ROLES


def train(out_dir: str | Path, *, recipe: str = "trio-roles", model: str = "smollm2-135m", count: int | None = 600,
          examples: int = 600, roles: tuple[str, ...] = ROLES, max_steps: int = 30, batch_size: int = 4,
          rank: int = 8, lr: float = 2e-4, seed: int = 0, overwrite: bool = False) -> dict:
    """Train each role's adapter; returns the ``trio.json`` manifest (also written to ``out_dir``).

    ``count``: the recipe's total before the split (None: the recipe's own). ``examples``: how many
    generated trio records (:mod:`slmlab.trio.examples`) to add. ``max_steps`` per role keeps a CPU
    run short; raise it for real training.
    """
    from slmlab.data.recipes import generate_dataset, load_recipe
    from slmlab.outputs import check_output
    from slmlab.train.config import load_train_config
    from slmlab.train.loop import run
    from slmlab.trio.examples import make_examples

    unknown = [r for r in roles if r not in ROLES]
    if unknown or not roles:
        raise SlmlabError(f"roles: unknown {unknown or 'none given'}; choose from {', '.join(ROLES)}")
    recipe_spec, _ = load_recipe(recipe)
    out = check_output(out_dir, "dir", overwrite=overwrite, what="trio output directory")
    # Every config is validated before any data is written or any model loads.
    configs = {role: _config(out, role, model, seed, rank, lr, batch_size, max_steps) for role in roles}
    if overwrite:  # a run directory that exists would make its run refuse to start
        for role in roles:
            shutil.rmtree(out / role, ignore_errors=True)
    data = generate_dataset(recipe, out / "data" / "recipe", count=count, seed=seed, overwrite=True)
    extra = make_examples(examples, seed=data.manifest["seed"], test_fraction=recipe_spec.test_fraction)
    manifest = {"model": model, "recipe": recipe_spec.name, "seed": seed, "max_steps": max_steps, "roles": {}}
    for role in roles:
        records = [r for r in data.train + extra if r.get("role") == role]
        if not records:
            raise SlmlabError(f"recipe {recipe!r} and the trio examples have no records for role {role!r}")
        path = out / "data" / f"{role}.jsonl"
        write_jsonl(path, records)
        cfg = load_train_config(data={**configs[role], "data": {"train": str(path), "packing": True}})
        result = run(cfg)
        manifest["roles"][role] = {
            "run_dir": role, "adapter": f"{role}/adapter", "examples": len(records), "steps": result.steps,
            "final_loss": result.losses[-1] if result.losses else None, "status": result.status,
        }
        atomic_write_text(out / "trio.json", json.dumps(manifest, ensure_ascii=False, indent=2) + "\n")
    return manifest


def _config(out: Path, role: str, model: str, seed: int, rank: int, lr: float, batch_size: int,
            max_steps: int) -> dict:
    from slmlab.train.config import load_train_config

    raw = {"name": role, "model": model, "output_dir": str(out), "seed": seed,
           "adapter": {"kind": "lora", "r": rank, "alpha": 2 * rank}, "optimizer": {"lr": lr},
           "batch_size": batch_size, "max_steps": max_steps, "save_every": None}
    load_train_config(data={**raw, "data": {"train": str(out / "data" / f"{role}.jsonl")}})  # validate now
    return raw
