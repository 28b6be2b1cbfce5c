"""The concept corpus: stories and paired scenarios, their positive/negative sets, preflight.

Layout (``docs/steering.md``)::

    CORPUS/stories/<concept>.txt            one paragraph embodying <concept> without naming it
    CORPUS/paired/<scenario>/baseline.txt   the scenario told neutrally (required)
    CORPUS/paired/<scenario>/<concept>.txt  the scenario framed through <concept>

A concept's **positives** are its story plus its framings in every scenario. Its
**negatives** are every other concept's positives plus every scenario baseline (minus any
text that is also one of its own positives). Texts are deduplicated by content: each unique
text is one *unit* and is run through the model once, however many sets it belongs to.

Everything here is pure Python and runs before any model loads, so a broken corpus fails
in milliseconds, not after a multi-minute model load.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

from slmlab.errors import SlmlabError

BASELINE = "baseline"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]*$")


@dataclass(frozen=True)
class Item:
    """One non-empty corpus file."""

    path: str  # relative to the corpus root, with forward slashes
    kind: str  # "story" | "framing" | "baseline"
    concept: str | None  # None for baselines
    scenario: str | None  # None for stories
    unit: int  # index into Corpus.texts


@dataclass
class Corpus:
    root: Path
    concepts: list[str]
    scenarios: list[str]
    texts: list[str]  # unique texts, in first-seen order (sorted paths)
    items: list[Item]
    warnings: list[str] = field(default_factory=list)

    # ------------------------------------------------------------------ sets
    def positive_items(self, concept: str) -> list[Item]:
        return [it for it in self.items if it.concept == concept]

    def positives(self, concept: str) -> list[int]:
        """Unique text indices of ``concept``'s positives (story first, then framings)."""
        return _unique(it.unit for it in self.positive_items(concept))

    def negatives(self, concept: str) -> list[int]:
        """Every other concept's positives plus every baseline, minus ``concept``'s own positives."""
        own = set(self.positives(concept))
        units = (it.unit for it in self.items if (it.concept != concept) and it.unit not in own)
        return _unique(units)

    def baselines(self) -> list[int]:
        return _unique(it.unit for it in self.items if it.kind == "baseline")

    def paths_of(self, unit: int) -> list[str]:
        return [it.path for it in self.items if it.unit == unit]

    @property
    def naive_forwards(self) -> int:
        """Forwards a per-concept extraction without sharing would do: Σ_c |pos_c| + |neg_c|."""
        return sum(len(self.positives(c)) + len(self.negatives(c)) for c in self.concepts)

    def text_hashes(self) -> list[str]:
        return [hashlib.sha256(t.encode("utf-8")).hexdigest()[:16] for t in self.texts]

    @property
    def sha256(self) -> str:
        """Hash of what extraction sees: every used file's relative path and stripped text."""
        h = hashlib.sha256()
        for it in sorted(self.items, key=lambda i: i.path):
            h.update(it.path.encode("utf-8") + b"\0" + self.texts[it.unit].encode("utf-8") + b"\0")
        return h.hexdigest()

    def summary(self) -> dict:
        return {
            "path": str(self.root),
            "sha256": self.sha256,
            "concepts": len(self.concepts),
            "scenarios": list(self.scenarios),
            "files": len(self.items),
            "unique_texts": len(self.texts),
            "positives": {c: len(self.positives(c)) for c in self.concepts},
        }


def _unique(xs) -> list[int]:
    seen: dict[int, None] = {}
    for x in xs:
        seen.setdefault(x, None)
    return list(seen)


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8").strip()
    except UnicodeDecodeError as exc:
        raise SlmlabError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def _check_name(path: Path, kind: str) -> str:
    name = path.stem if path.is_file() else path.name
    if not NAME_RE.match(name):
        raise SlmlabError(f"{path}: {kind} names use letters, digits, '_' and '-' only (got {name!r})")
    return name


def load_corpus(root: str | Path, *, min_concepts: int = 2) -> Corpus:
    """Read and validate a corpus directory; raise :class:`SlmlabError` naming the problem.

    Checks: the directory exists and has ``stories/`` and/or ``paired/``; every scenario has a
    non-empty ``baseline.txt``; no story is called ``baseline``; at least ``min_concepts``
    concepts with at least one non-empty positive each. Empty files are skipped, with a
    warning naming each one (``Corpus.warnings``).
    """
    root = Path(root).expanduser()
    if not root.exists():
        raise SlmlabError(f"corpus directory {root} does not exist")
    if not root.is_dir():
        raise SlmlabError(f"corpus {root} is not a directory (expected stories/ and/or paired/ inside)")
    stories_dir, paired_dir = root / "stories", root / "paired"
    for d in (stories_dir, paired_dir):
        if d.exists() and not d.is_dir():
            raise SlmlabError(f"{d} exists but is not a directory")
    if not stories_dir.is_dir() and not paired_dir.is_dir():
        raise SlmlabError(f"{root} has neither stories/ nor paired/: expected {stories_dir} and/or {paired_dir}")

    warnings: list[str] = []
    raw: list[tuple[str, str, str | None, str | None, str]] = []  # (relpath, kind, concept, scenario, text)

    def rel(p: Path) -> str:
        return p.relative_to(root).as_posix()

    if stories_dir.is_dir():
        for p in sorted(stories_dir.glob("*.txt")):
            concept = _check_name(p, "concept")
            if concept == BASELINE:
                raise SlmlabError(f"{p}: 'baseline' is reserved for paired/<scenario>/baseline.txt; rename this story")
            text = _read(p)
            if not text:
                warnings.append(f"skipped empty file {rel(p)}")
                continue
            raw.append((rel(p), "story", concept, None, text))

    scenarios: list[str] = []
    if paired_dir.is_dir():
        for d in sorted(x for x in paired_dir.iterdir() if x.is_dir()):
            scenario = _check_name(d, "scenario")
            base = d / "baseline.txt"
            if not base.is_file():
                raise SlmlabError(
                    f"scenario {scenario!r} has no baseline: {base} is missing. Every paired scenario needs a "
                    f"neutral baseline.txt (it is a shared negative), or remove the directory."
                )
            base_text = _read(base)
            if not base_text:
                raise SlmlabError(f"scenario {scenario!r} has an empty baseline: {base} must hold the neutral telling")
            scenarios.append(scenario)
            raw.append((rel(base), "baseline", None, scenario, base_text))
            for p in sorted(d.glob("*.txt")):
                if p.name == "baseline.txt":
                    continue
                concept = _check_name(p, "concept")
                text = _read(p)
                if not text:
                    warnings.append(f"skipped empty file {rel(p)}")
                    continue
                raw.append((rel(p), "framing", concept, scenario, text))

    texts: list[str] = []
    index: dict[str, int] = {}
    items: list[Item] = []
    for path, kind, concept, scenario, text in raw:
        if text not in index:
            index[text] = len(texts)
            texts.append(text)
        items.append(Item(path, kind, concept, scenario, index[text]))

    concepts = sorted({it.concept for it in items if it.concept is not None})
    if len(concepts) < min_concepts:
        found = ", ".join(concepts) if concepts else "none"
        raise SlmlabError(
            f"{root}: need at least {min_concepts} concepts with a non-empty positive text, found {len(concepts)} ({found}). "
            f"Add stories/<concept>.txt files."
        )
    corpus = Corpus(root=root, concepts=concepts, scenarios=scenarios, texts=texts, items=items, warnings=warnings)
    for c in concepts:
        if not corpus.negatives(c):
            raise SlmlabError(f"concept {c!r} has no negatives: every text in the corpus is one of its positives")
    return corpus
