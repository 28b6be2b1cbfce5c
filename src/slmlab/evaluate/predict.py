"""Danger-zone prediction: which basin will a prompt land in, learnt from basin maps.

A deliberately light model — multinomial logistic regression (numpy, L2) on hashed
word unigrams/bigrams plus a few shape features — because the training set is a few
hundred labelled generations at most. Its cross-validated accuracy is reported next
to the majority-class baseline, with folds split by *prompt* (samples of one prompt
never sit on both sides), and a warning when the data are too few to trust.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

import numpy as np

from slmlab.evaluate.basin_map import BASINS, read_map

DIM = 1024
_WORD = re.compile(r"[a-z']+")
MIN_PROMPTS = 30


def features(prompt: str) -> np.ndarray:
    v = np.zeros(DIM + 4)
    words = _WORD.findall(prompt.lower())
    for gram in words + [f"{a} {b}" for a, b in zip(words, words[1:])]:
        h = int.from_bytes(hashlib.blake2b(gram.encode(), digest_size=4).digest(), "little")
        v[h % DIM] += 1.0
    norm = np.linalg.norm(v[:DIM])
    if norm:
        v[:DIM] /= norm
    v[DIM:] = [np.log1p(len(words)) / 5, prompt.count("?") > 0, prompt.count(",") / 5, 1.0]  # last = bias
    return v


def _fit(x: np.ndarray, y: np.ndarray, k: int, l2: float = 1e-2, steps: int = 300, lr: float = 0.5) -> np.ndarray:
    w = np.zeros((x.shape[1], k))
    onehot = np.eye(k)[y]
    for _ in range(steps):
        z = x @ w
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        w -= lr * (x.T @ (p - onehot) / len(x) + l2 * w)
    return w


def _predict(w: np.ndarray, x: np.ndarray) -> np.ndarray:
    z = x @ w
    p = np.exp(z - z.max(1, keepdims=True))
    return p / p.sum(1, keepdims=True)


@dataclass
class DangerModel:
    weights: np.ndarray
    cv_accuracy: float | None
    majority_accuracy: float
    n_samples: int
    n_prompts: int
    warning: str | None

    def predict(self, prompt: str) -> dict[str, float]:
        return dict(zip(BASINS, _predict(self.weights, features(prompt)[None])[0].round(4).tolist()))


def train_danger_model(map_paths: list, folds: int = 5, seed: int = 0) -> DangerModel:
    rows = []
    for path in map_paths:
        for entry in read_map(path)["prompts"]:
            for smp in entry["samples"]:
                rows.append((entry["input"], BASINS.index(smp["basin"])))
    prompts = sorted({p for p, _ in rows})
    x = np.stack([features(p) for p, _ in rows])
    y = np.array([b for _, b in rows])
    majority = np.bincount(y, minlength=len(BASINS)).max() / len(y)
    cv = None
    if len(prompts) >= folds:
        rng = np.random.default_rng(seed)
        fold_of = dict(zip(prompts, rng.permutation(len(prompts)) % folds))
        f = np.array([fold_of[p] for p, _ in rows])
        correct = 0
        for k in range(folds):
            w = _fit(x[f != k], y[f != k], len(BASINS))
            correct += int((_predict(w, x[f == k]).argmax(1) == y[f == k]).sum())
        cv = correct / len(y)
    warning = None
    if len(prompts) < MIN_PROMPTS:
        warning = f"only {len(prompts)} distinct prompts (< {MIN_PROMPTS}): too few to trust these probabilities"
    elif cv is not None and cv <= majority + 0.02:
        warning = f"cross-validated accuracy {cv:.0%} is no better than always guessing the majority basin ({majority:.0%})"
    return DangerModel(_fit(x, y, len(BASINS)), cv, float(majority), len(rows), len(prompts), warning)
