"""Shared config plumbing: YAML loading and pydantic errors a person can act on.

Every problem in a config is collected and reported at once, each naming the field
as the user typed it (``categories[1].weight``) and what was expected.
"""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from slmlab.errors import SlmlabError

M = TypeVar("M", bound=BaseModel)


class StrictModel(BaseModel):
    """The base of every slmlab config section: unknown keys are errors, never silently ignored."""

    model_config = ConfigDict(extra="forbid")


class ConfigError(SlmlabError):
    """A config file (or dict) that does not validate; the message lists every problem."""


def flatten_dotted(data: dict, prefix: str = "") -> dict:
    """``{"adapter": {"r": 4}}`` → ``{"adapter.r": 4}`` (the keys ``--set`` and series grids use)."""
    out: dict = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(flatten_dotted(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def field_path(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def describe_validation_error(exc: ValidationError, source: str) -> str:
    lines = [f"{source}: {exc.error_count()} problem(s):"]
    for err in exc.errors():
        got = err.get("input")
        shown = "" if err["type"] == "missing" or isinstance(got, dict) else f" (got {got!r})"
        lines.append(f"  - {field_path(err['loc'])}: {err['msg']}{shown}")
    return "\n".join(lines)


def validate_model(model: type[M], data: object, source: str) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, source)) from None


def load_yaml(path: str | Path) -> object:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such file")
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)  # only parser/scanner errors carry a position
        where = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}{where}: not valid YAML: {getattr(exc, 'problem', exc)}") from None


def set_dotted(data: dict, key: str, value: object) -> None:
    """``data["a"]["b"] = value`` for ``key="a.b"``, creating sections on the way (``--set a.b=…``)."""
    parts = key.split(".")
    node = data
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {key}: {p!r} is not a section")
    node[parts[-1]] = value


def apply_overrides(raw: dict, overrides: list[str] | None) -> dict:
    """``key=value`` items (values parsed as YAML) set into ``raw``, which is returned."""
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value")
        key, value = item.split("=", 1)
        set_dotted(raw, key.strip(), yaml.safe_load(value))
    return raw


def suggest_unknown_keys(data: dict, model: type[BaseModel], prefix: str = "") -> list[str]:
    """'did you mean' hints for keys ``model`` does not have, walking nested sections."""
    from slmlab.errors import unknown_name_message

    hints = []
    for key, value in data.items():
        fields = model.model_fields
        if key not in fields:
            hints.append(f"{prefix}{key}: " + unknown_name_message("key", key, list(fields)))
            continue
        sub = fields[key].annotation
        if isinstance(value, dict) and isinstance(sub, type) and issubclass(sub, BaseModel):
            hints += suggest_unknown_keys(value, sub, f"{prefix}{key}.")
    return hints


def load_config(model: type[M], path: str | Path | None = None, overrides: list[str] | None = None,
                data: dict | None = None) -> M:
    """A YAML file (or ``data``), then ``key=value`` overrides, validated as ``model``.

    Unknown keys are one error listing each with a "did you mean"; other problems name the field.
    """
    raw = dict(data or {})
    source = "config"
    if path is not None:
        loaded = load_yaml(path)
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of config keys")
        raw, source = loaded, str(path)
    apply_overrides(raw, overrides)
    hints = suggest_unknown_keys(raw, model)
    if hints:
        raise ConfigError(f"{source}: unknown key(s):\n" + "\n".join(f"  - {h}" for h in hints))
    return validate_model(model, raw, source)
