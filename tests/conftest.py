"""Shared fixtures. Tokenizer and models are session-scoped: loading is the slow part."""

from __future__ import annotations

import os

import pytest

# Tests never touch a hub, even by accident.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def tokenizer():
    from slmlab.models import load_tokenizer

    return load_tokenizer("tiny-random")


@pytest.fixture(scope="session")
def tiny():
    """(model, tokenizer) for the deterministic tiny random Llama."""
    from slmlab.models import load

    return load("tiny-random")


@pytest.fixture(scope="session")
def smollm():
    """(model, tokenizer) for the embedded SmolLM2-135M (integration tests only)."""
    from slmlab.models import load

    return load("smollm2-135m")
