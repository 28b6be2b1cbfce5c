"""slmlab serve: an OpenAI-compatible server that also trains online.

    from slmlab.serve import ServeConfig, create_app, run
    app = create_app(ServeConfig(model="tiny-random"))     # an ASGI app (FastAPI)
    run(ServeConfig(model="smollm2-135m", port=8000))      # uvicorn, what `slmlab serve` does

See docs/serve.md for the routes, the weight-version rule and online training.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from slmlab.serve.config import OnlineTrainingConfig, ServeConfig

__all__ = ["OnlineTrainingConfig", "ServeConfig", "build_config", "create_app", "run"]


def create_app(config: ServeConfig, *, model=None, tokenizer=None):
    """The FastAPI app for ``config`` (see :func:`slmlab.serve.app.create_app`)."""
    from slmlab.serve.app import create_app as _create

    return _create(config, model=model, tokenizer=tokenizer)


def build_config(path: str | Path | None = None, flags: dict[str, Any] | None = None,
                 overrides: list[str] | None = None) -> ServeConfig:
    """Settings from a YAML file, then CLI flags, then ``KEY=VALUE`` overrides; errors name the key.

    ``flags`` may hold ``api_key_file`` (the key is read from it, surrounding whitespace
    stripped) and ``train_full`` (→ ``training.full``).
    """
    from slmlab.config import ConfigError, apply_overrides, load_yaml, validate_model

    raw: dict[str, Any] = {}
    if path is not None:
        loaded = load_yaml(path)
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of server settings")
        raw = loaded
    flags = dict(flags or {})
    key_file = flags.pop("api_key_file", None)
    if flags.pop("train_full", False):
        raw.setdefault("training", {})["full"] = True
    for key, value in flags.items():
        if value not in (None, [], {}):
            raw[key] = [str(v) for v in value] if isinstance(value, list) else value
    apply_overrides(raw, overrides)
    if key_file is not None:
        raw["api_key"] = read_key(Path(key_file))
    return validate_model(ServeConfig, raw, str(path) if path else "server settings")


def read_key(path: Path) -> str:
    from slmlab.errors import SlmlabError

    try:
        key = path.read_text(encoding="utf-8").strip()
    except OSError as e:
        raise SlmlabError(f"--api-key-file {path}: {e.strerror or e}") from None
    if len(key) < 8:
        raise SlmlabError(f"--api-key-file {path}: the key must be at least 8 characters")
    return key


def run(config: ServeConfig) -> None:
    """Load the model and serve until interrupted (uvicorn)."""
    import uvicorn

    app = create_app(config)
    uvicorn.run(app, host=config.host, port=config.port, log_level="info", access_log=False)
