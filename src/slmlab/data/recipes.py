"""Recipes: YAML files that mix generated categories into a train/test dataset.

A recipe names categories; each has a generator (``logic``, ``tools``, ``jsonl``), the
generator's parameters, a ``count`` or a ``weight``, and optionally the ``role`` and
``format`` templates used to render it for training. The mix ratio (e.g. 60% pure /
40% hybrid logic) is expressed through weights and is exact: counts are allocated by
the largest-remainder method.

Guarantees:

* Same recipe + same seed → byte-identical ``train.jsonl``, ``test.jsonl``, ``manifest.json``.
* Exact duplicates (same input and output) are removed while generating.
* Splits are leakage-free: records are grouped by a split key (for logic puzzles, the
  puzzle up to renaming of symbols — pure and hybrid renderings of one puzzle share it),
  and a whole group lands in one split.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from slmlab import __version__
from slmlab.config import ConfigError, load_yaml, validate_model
from slmlab.errors import SlmlabError, unknown_name_message
from slmlab.io import atomic_write_text, iter_jsonl, write_jsonl
from slmlab.progress import ProgressFactory, tracker


class Category(BaseModel):
    """One kind of example in the mix."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Unique name; becomes the record's `category`.")
    generator: str = Field(description="Generator name: logic, tools or jsonl.")
    params: dict[str, Any] = Field(default_factory=dict, description="Generator parameters.")
    count: int | None = Field(default=None, gt=0, description="Exact number of examples.")
    weight: float | None = Field(default=None, gt=0, description="Share of the recipe's total count.")
    role: str | None = Field(default=None, description="Role template (creative, logical, dialectical).")
    format: str | None = Field(default=None, description="Prompt format template (v6, chat, ...).")

    @model_validator(mode="after")
    def _count_or_weight(self) -> Category:
        if (self.count is None) == (self.weight is None):
            raise ValueError("give exactly one of `count` or `weight`")
        return self


class Recipe(BaseModel):
    """A dataset recipe (see the module docstring)."""

    model_config = ConfigDict(extra="forbid")

    name: str
    description: str = ""
    seed: int = 0
    count: int | None = Field(default=None, gt=0, description="Total count; required when categories use weights.")
    test_fraction: float = Field(
        default=0.1, ge=0.0, lt=1.0,
        description="Held-out share (approximate: whole puzzle groups are assigned by a seeded hash).",
    )
    categories: list[Category] = Field(min_length=1)

    @model_validator(mode="after")
    def _consistent(self) -> Recipe:
        names = [c.name for c in self.categories]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"category names must be unique; repeated: {', '.join(dupes)}")
        if any(c.weight is not None for c in self.categories) and self.count is None:
            raise ValueError("categories use `weight`, so the recipe needs a total `count` (or pass --count)")
        return self


# --------------------------------------------------------------------------- generators


@dataclass
class GenContext:
    """What a generator may need beyond its params: where relative paths start."""

    base_dir: Path
    category: str
    seed: int


@dataclass
class Example:
    record: dict
    group: str  # split key: examples sharing it always land in the same split


GeneratorFn = Callable[[random.Random, int, dict, GenContext], list[Example]]


def _logic_generator(rng: random.Random, count: int, params: dict, ctx: GenContext) -> list[Example]:
    from slmlab.data import logic

    params = dict(params)
    render = params.pop("render", "pure")
    if render not in ("pure", "hybrid"):
        raise ConfigError(f"category {ctx.category!r}: params.render must be 'pure' or 'hybrid', got {render!r}")
    # Graded puzzles (◕ ◔) are about likelihood, not entailment: a recipe opts in by naming the family.
    families = params.pop("families", None) or [f for f in logic.FAMILIES if f != "graded"]
    answer = params.pop("answer", None)
    pool_size = params.pop("pool_size", logic.DEFAULT_POOL_SIZE)
    # The shape pool follows the recipe seed, so another seed gives other puzzles, not just other letters.
    items = logic.generate_pure(rng, count, families, answer, pool_size=pool_size, pool_seed=ctx.seed, **params)
    out = []
    for item in items:
        if render == "pure":
            record = {"input": item.text, "output": item.answer, "family": item.family, "render": "pure"}
        else:
            question, answer_line = logic.render_hybrid(item, rng)
            record = {"input": question, "output": answer_line, "family": item.family, "render": "hybrid"}
        record["answer"] = item.answer
        record["puzzle"] = item.text
        out.append(Example(record, "logic:" + item.key))
    return out


def _logic_preference_generator(rng: random.Random, count: int, params: dict, ctx: GenContext) -> list[Example]:
    """Preference pairs from verified puzzles: chosen = the solver's answer, rejected = a wrong glyph.

    Records keep ``input``/``output`` (= prompt/chosen) so SFT tooling and ``validate``
    work on them unchanged, and add ``prompt``, ``chosen``, ``rejected`` for DPO/ORPO.
    """
    from slmlab.data.glyphs import CERTAIN, CERTAINLY_NOT, UNDETERMINED

    examples = _logic_generator(rng, count, params, ctx)
    for ex in examples:
        rec = ex.record
        right = rec["answer"]
        wrong = rng.choice([g for g in (CERTAIN, CERTAINLY_NOT, UNDETERMINED) if g != right])
        rejected = wrong if rec["render"] == "pure" else wrong + rec["output"][len(right):]
        rec.update({"prompt": rec["input"], "chosen": rec["output"], "rejected": rejected})
    return examples


def _tools_generator(rng: random.Random, count: int, params: dict, ctx: GenContext) -> list[Example]:
    from slmlab.data import tools

    params = dict(params)
    style = params.pop("style", "scaffolded")
    styles = ["bare", "scaffolded"] if style == "mixed" else [style]
    names = params.pop("tools", None)
    specialist = float(params.pop("specialist", 0.0))
    registry_path = params.pop("registry", None)
    if params:
        raise ConfigError(
            f"category {ctx.category!r}: unknown tools params {sorted(params)}; "
            "known: style, tools, specialist, registry"
        )
    registry = tools.load_registry(ctx.base_dir / registry_path if registry_path else None)
    names = names or sorted(registry.tools)
    out = []
    for _ in range(count):
        ex = tools.make_tool_example(
            rng,
            style=rng.choice(styles),
            tool=rng.choice(names),
            specialist=rng.random() < specialist,
            registry=registry,
        )
        out.append(Example(ex, "tools:" + ex["input"]))
    return out


def _jsonl_generator(rng: random.Random, count: int, params: dict, ctx: GenContext) -> list[Example]:
    """User-supplied examples (creative writing, poetry, …), sampled without replacement."""
    params = dict(params)
    if "path" not in params:
        raise ConfigError(f"category {ctx.category!r}: the jsonl generator needs params.path")
    path = ctx.base_dir / params.pop("path")
    input_field = params.pop("input_field", "input")
    output_field = params.pop("output_field", "output")
    family = params.pop("family", ctx.category)
    if params:
        raise ConfigError(
            f"category {ctx.category!r}: unknown jsonl params {sorted(params)}; "
            "known: path, input_field, output_field, family"
        )
    rows = []
    for line in iter_jsonl(path):
        for name in (input_field, output_field):
            if not isinstance(line.record.get(name), str):
                raise SlmlabError(f"{path}:{line.number}: field {name!r} must be a string")
        rows.append({"input": line.record[input_field], "output": line.record[output_field], "family": family})
    rng.shuffle(rows)
    # All rows: duplicates are removed by the caller, which then keeps the first `count`.
    return [Example(r, "text:" + r["input"]) for r in rows]


GENERATORS: dict[str, GeneratorFn] = {
    "logic": _logic_generator,
    "logic-preference": _logic_preference_generator,
    "tools": _tools_generator,
    "jsonl": _jsonl_generator,
}


# --------------------------------------------------------------------------- loading


def recipes_dir():
    return resources.files("slmlab") / "resources" / "recipes"


def list_recipes() -> list[str]:
    return sorted(p.name.removesuffix(".yaml") for p in recipes_dir().iterdir() if p.name.endswith(".yaml"))


def recipe_path(name_or_path: str | Path) -> Path:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise ConfigError(f"{path}: no such recipe file")
        return path
    shipped = recipes_dir() / f"{name_or_path}.yaml"
    if not shipped.is_file():
        raise ConfigError(unknown_name_message("recipe", str(name_or_path), list_recipes()) + " Or pass a path to a YAML file.")
    return Path(str(shipped))


def load_recipe(name_or_path: str | Path) -> tuple[Recipe, Path]:
    """Parse and validate a recipe; returns it and the directory its relative paths start from."""
    path = recipe_path(name_or_path)
    recipe = validate_model(Recipe, load_yaml(path), f"recipe {path}")
    for cat in recipe.categories:
        if cat.generator not in GENERATORS:
            raise ConfigError(
                f"recipe {path}: categories[{cat.name}].generator: "
                + unknown_name_message("generator", cat.generator, list(GENERATORS))
            )
    _check_templates(recipe, path)
    return recipe, path.parent


def _check_templates(recipe: Recipe, path: Path) -> None:
    from slmlab.data import roles

    for cat in recipe.categories:
        for fld in ("role", "format"):
            name = getattr(cat, fld)
            if name is not None:
                try:
                    roles.load_template(name)
                except ValueError as exc:
                    raise ConfigError(f"recipe {path}: categories[{cat.name}].{fld}: {exc}") from None


# --------------------------------------------------------------------------- building


def allocate(total: int, weights: list[float]) -> list[int]:
    """Split ``total`` by ``weights`` exactly (largest remainder), so 60/40 of 6650 is 3990/2660."""
    s = sum(weights)
    raw = [total * w / s for w in weights]
    counts = [int(r) for r in raw]
    order = sorted(range(len(raw)), key=lambda i: (-(raw[i] - counts[i]), i))
    for i in order[: total - sum(counts)]:
        counts[i] += 1
    return counts


def category_counts(recipe: Recipe, count: int | None = None) -> dict[str, int]:
    """Per-category counts. ``count`` rescales the whole recipe, keeping its proportions."""
    cats = recipe.categories
    if count is None and all(c.weight is None for c in cats):
        return {c.name: c.count for c in cats}  # type: ignore[misc]
    total = count if count is not None else recipe.count
    if all(c.weight is None for c in cats):
        weights = [float(c.count) for c in cats]  # type: ignore[arg-type]
    elif all(c.count is None for c in cats):
        weights = [c.weight for c in cats]  # type: ignore[misc]
    else:
        raise ConfigError(f"recipe {recipe.name}: mix either counts or weights across categories, not both")
    return dict(zip([c.name for c in cats], allocate(total, weights)))


def _generate_category(cat: Category, n: int, seed: int, base_dir: Path) -> list[Example]:
    """Generate ``n`` unique examples, topping up after duplicates are dropped."""
    # A string seed is hashed with SHA-512 by `random`, so this is stable across runs and machines.
    rng = random.Random(f"{seed}:{cat.name}")
    ctx = GenContext(base_dir=base_dir, category=cat.name, seed=seed)
    seen: set[tuple[str, str]] = set()
    kept: list[Example] = []
    for _attempt in range(50):
        need = n - len(kept)
        if need <= 0:
            break
        try:
            batch = GENERATORS[cat.generator](rng, need, cat.params, ctx)
        except (ValueError, TypeError) as exc:  # SlmlabError included: add which category it was
            raise ConfigError(f"category {cat.name!r} ({cat.generator}): {exc}") from None
        for ex in batch:
            k = (ex.record["input"], ex.record["output"])
            if k not in seen:
                seen.add(k)
                kept.append(ex)
        if cat.generator == "jsonl":
            break  # a file has what it has; asking again returns the same rows
    if len(kept) < n:
        raise SlmlabError(
            f"category {cat.name!r} produced only {len(kept)} unique examples of the {n} requested; "
            "lower its count or widen its parameters"
        )
    return kept[:n]


def in_test_split(group: str, seed: int, test_fraction: float) -> bool:
    """Whether a group is held out: a pure function of (seed, group).

    Because it does not depend on which other groups exist, a puzzle shape is on the
    same side in every dataset built with the same seed — whatever the count, and in
    every recipe that draws from the same shape pools (pure-logic and v6-golden do). So
    "held out" stays held out when a suite regenerates a test split with another count.
    """
    digest = hashlib.sha256(f"{seed}:{group}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < test_fraction


def split_groups(examples: list[Example], test_fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    """Whole groups go to train or test; the test share is test_fraction up to sampling noise over groups."""
    train, test = [], []
    for ex in examples:
        (test if in_test_split(ex.group, seed, test_fraction) else train).append(ex)
    return train, test


@dataclass
class DatasetResult:
    out_dir: Path
    manifest: dict
    train: list[dict] = field(repr=False)
    test: list[dict] = field(repr=False)


def _summary(records: list[dict]) -> dict:
    return {
        "count": len(records),
        "categories": dict(sorted(Counter(r["category"] for r in records).items())),
        "answers": dict(sorted(Counter(r["answer"] for r in records if "answer" in r).items())),
        "renders": dict(sorted(Counter(r["render"] for r in records if "render" in r).items())),
    }


def _category_records(recipe_name: str, cat: Category, generated: list[Example]) -> list[Example]:
    """A category's examples as dataset records: id, the required fields first, then role/format."""
    out = []
    for i, ex in enumerate(generated):
        rec = {"id": f"{recipe_name}-{cat.name}-{i:06d}", "category": cat.name, **ex.record}
        rec = {k: rec[k] for k in ("id", "input", "output", "category", "family")} | {
            k: v for k, v in rec.items() if k not in ("id", "input", "output", "category", "family")
        }
        if cat.role:
            rec["role"] = cat.role
        if cat.format:
            rec["format"] = cat.format
        out.append(Example(rec, ex.group))
    return out


def generate_dataset(
    recipe: str | Path | Recipe,
    out_dir: str | Path,
    *,
    count: int | None = None,
    seed: int | None = None,
    base_dir: Path | None = None,
    overwrite: bool = True,
    progress: ProgressFactory | None = None,
) -> DatasetResult:
    """Build a recipe into ``out_dir/{train,test}.jsonl`` and ``manifest.json``.

    ``count`` rescales the recipe's total keeping its proportions; ``seed`` overrides the
    recipe's. Files are written atomically, and the manifest last, so a directory with a
    manifest is always complete. ``out_dir`` is checked before anything is generated
    (:func:`slmlab.outputs.check_output`); with ``overwrite=False`` a non-empty one is an error.
    ``progress`` (e.g. :func:`slmlab.progress.progress`) counts examples as each category is done.
    """
    from slmlab.outputs import check_output

    if isinstance(recipe, Recipe):
        base_dir = base_dir or Path.cwd()
    else:
        recipe, base_dir = load_recipe(recipe)
    out_dir = check_output(out_dir, "dir", overwrite=overwrite, what="output directory")
    seed = recipe.seed if seed is None else seed
    counts = category_counts(recipe, count)

    examples: list[Example] = []
    with tracker(progress, sum(counts.values()), f"data {recipe.name}") as p:
        for cat in recipe.categories:
            examples += _category_records(recipe.name, cat, _generate_category(cat, counts[cat.name], seed, base_dir))
            p.advance(counts[cat.name])

    random.Random(f"{seed}:shuffle").shuffle(examples)
    train_ex, test_ex = split_groups(examples, recipe.test_fraction, seed)
    train = [ex.record for ex in train_ex]
    test = [ex.record for ex in test_ex]

    out = Path(out_dir)
    hashes = {"train.jsonl": write_jsonl(out / "train.jsonl", train), "test.jsonl": write_jsonl(out / "test.jsonl", test)}
    manifest = {
        "recipe": recipe.name,
        "seed": seed,
        "requested": counts,
        "slmlab_version": __version__,
        "splits": {"train": _summary(train), "test": _summary(test)},
        "all": _summary(train + test),
        "groups": {
            "train": len({ex.group for ex in train_ex}),
            "test": len({ex.group for ex in test_ex}),
            "shared": len({ex.group for ex in train_ex} & {ex.group for ex in test_ex}),
        },
        "files": hashes,
        "content_hash": hashlib.sha256("".join(hashes[k] for k in sorted(hashes)).encode()).hexdigest(),
        "resolved_recipe": recipe.model_dump(mode="json"),
    }
    atomic_write_text(out / "manifest.json", json.dumps(manifest, ensure_ascii=False, indent=2) + "\n")
    return DatasetResult(out, manifest, train, test)

