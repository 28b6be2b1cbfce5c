"""Prompt formats and role framings as data: YAML templates that turn a record into (prompt, completion).

A template file (shipped ones live in ``resources/roles/``)::

    name: v6
    description: ...
    kind: text            # text: prompt is literal text; chat: prompt is the user message
    prompt: "Q: {input}\\nA:"
    completion_prefix: " "   # optional; put before the output
    system: ...           # optional, chat templates only

``prompt`` is a Python format string whose only field is ``{input}`` (write ``{{`` and
``}}`` for literal braces).

Training learns ``completion`` given ``prompt``, so the two must split the text where
tokenization also splits it. Two rules keep that boundary stable:

* Text prompts must not end in a space. BPE tokenizers attach a space to the word
  after it, so a prompt ending in ``"A: "`` tokenizes as ``A``, ``:``, ``Ġ`` on its own
  but as ``A``, ``:``, ``Ġanswer`` in training text. Put the space in
  ``completion_prefix`` instead, as ``v6`` does: prompt ``Q: {input}\\nA:``, completion
  `` {output}``.
* Chat templates are rendered by the tokenizer's own chat template, the prompt with
  ``add_generation_prompt=True`` and the full conversation with the assistant turn;
  the completion is whatever the full text adds after the prompt, so it carries the
  template's end-of-turn marker exactly as the model will see it at inference.

Every completion ends with the tokenizer's EOS token string (for chat templates that
close turns with EOS, such as SmolLM2's ``<|im_end|>``, it is already there), so a
model trained on it learns to stop even when pad and EOS are the same token and the
collator masks padding.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from slmlab.config import ConfigError, load_yaml
from slmlab.errors import SlmlabError, unknown_name_message

KINDS = ("text", "chat")
_REQUIRED = ("name", "kind", "prompt")
_OPTIONAL = ("description", "system", "completion_prefix")


class TemplateError(ConfigError):
    """A template file that cannot be used, or a template that cannot render with this tokenizer."""


@dataclass(frozen=True)
class Template:
    name: str
    kind: str
    prompt: str
    description: str = ""
    system: str | None = None
    completion_prefix: str = ""
    source: str = ""  # the file it came from, for error messages

    def user_text(self, input_text: str) -> str:
        return self.prompt.format(input=input_text)


# --------------------------------------------------------------------------- loading


def templates_dir() -> Path:
    return Path(str(resources.files("slmlab") / "resources" / "roles"))


def list_templates() -> list[str]:
    return sorted(p.stem for p in templates_dir().glob("*.yaml"))


def load_template(name_or_path: str | Path | Template) -> Template:
    """A shipped template by name (``v6``, ``chat``, ``creative``, …) or a YAML file by path."""
    if isinstance(name_or_path, Template):
        return name_or_path
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise TemplateError(f"{path}: no such template file")
        return _parse(load_yaml(path), str(path))
    shipped = templates_dir() / f"{name_or_path}.yaml"
    if not shipped.is_file():
        raise TemplateError(
            unknown_name_message("template", str(name_or_path), list_templates()) + " Or pass a path to a YAML file."
        )
    return _parse(load_yaml(shipped), str(shipped))


def _parse(data: Any, source: str) -> Template:
    if not isinstance(data, dict):
        raise TemplateError(f"{source}: expected a mapping with {', '.join(_REQUIRED)}")
    unknown = [k for k in data if k not in _REQUIRED + _OPTIONAL]
    if unknown:
        raise TemplateError(
            f"{source}: unknown field(s) {', '.join(map(repr, unknown))}; allowed: {', '.join(_REQUIRED + _OPTIONAL)}"
        )
    for key in _REQUIRED:
        if key not in data:
            raise TemplateError(f"{source}: missing required field {key!r}")
    for key in _REQUIRED + _OPTIONAL:
        if key in data and not isinstance(data[key], str):
            raise TemplateError(f"{source}: field {key!r} must be a string, got {type(data[key]).__name__}")
    if data["kind"] not in KINDS:
        raise TemplateError(f"{source}: field 'kind' must be one of {', '.join(KINDS)}, got {data['kind']!r}")
    _check_prompt(data["prompt"], source)
    if data["kind"] == "text":
        _check_text_boundary(data, source)
    return Template(
        name=data["name"],
        kind=data["kind"],
        prompt=data["prompt"],
        description=data.get("description", "").strip(),
        system=data.get("system"),
        completion_prefix=data.get("completion_prefix", ""),
        source=source,
    )


def _check_prompt(prompt: str, source: str) -> None:
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(prompt) if f is not None]
    except ValueError as exc:
        raise TemplateError(f"{source}: field 'prompt': malformed placeholder ({exc}); write {{{{ and }}}} for literal braces") from None
    others = sorted({f for f in fields if f != "input"})
    if others:
        raise TemplateError(
            f"{source}: field 'prompt': unknown placeholder(s) {', '.join('{' + f + '}' for f in others)}; "
            "only {input} is available (write {{ and }} for literal braces)"
        )
    if "input" not in fields:
        raise TemplateError(f"{source}: field 'prompt' must contain the placeholder {{input}}")


def _check_text_boundary(data: dict, source: str) -> None:
    if "system" in data:
        raise TemplateError(f"{source}: field 'system' is only used by chat templates; put the text in 'prompt'")
    if data["prompt"].endswith((" ", "\t")):
        raise TemplateError(
            f"{source}: field 'prompt' ends with a space, which tokenizes differently alone than before the "
            "completion; move the space into 'completion_prefix'"
        )


# --------------------------------------------------------------------------- rendering


def render(record: dict, template: Template, tokenizer) -> tuple[str, str]:
    """``(prompt, completion)`` for training; ``prompt`` equals :func:`render_prompt` of the input."""
    input_text, output = _field(record, "input"), _field(record, "output")
    eos = _eos(tokenizer)
    prompt = render_prompt(input_text, template, tokenizer)
    if template.kind == "text":
        return prompt, template.completion_prefix + output + eos
    messages = _messages(template, input_text) + [{"role": "assistant", "content": template.completion_prefix + output}]
    full = _apply_chat(tokenizer, messages, template, add_generation_prompt=False)
    if not full.startswith(prompt):
        raise TemplateError(
            f"template {template.name!r} ({template.source}): the tokenizer's chat template renders the prompt "
            "differently alone than inside the full conversation, so prompt and completion cannot be split "
            f"consistently.\n  prompt: {prompt[-80:]!r}\n  full:   {full[: len(prompt) + 20][-100:]!r}\n"
            "Use a text template (e.g. v6) with this tokenizer."
        )
    completion = full[len(prompt):]
    if eos not in completion:  # the end-of-turn marker is not EOS: add EOS so generation knows to stop
        completion += eos
    return prompt, completion


def render_prompt(input_text: str, template: Template, tokenizer) -> str:
    """The prompt for generation; identical to the prompt part of :func:`render`."""
    if template.kind == "text":
        return template.user_text(input_text)
    return _apply_chat(tokenizer, _messages(template, input_text), template, add_generation_prompt=True)


def token_boundary_ok(prompt: str, completion: str, tokenizer) -> bool:
    """Whether the prompt's tokens are a prefix of the tokens of prompt + completion.

    When they are not, a trainer that masks the first ``len(prompt_ids)`` tokens masks
    the wrong ones. The shipped templates keep the boundary stable for ordinary
    outputs; an output that itself starts with spaces after a prompt ending in a
    newline can still merge across it (``"\\n"`` + ``"  x"`` → ``"\\n "``, ``" x"``).
    """
    head = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    full = tokenizer(prompt + completion, add_special_tokens=False)["input_ids"]
    return full[: len(head)] == head


def _field(record: dict, key: str) -> str:
    value = record.get(key) if isinstance(record, dict) else None
    if not isinstance(value, str):
        where = f" (record {record.get('id')!r})" if isinstance(record, dict) and "id" in record else ""
        raise SlmlabError(f"record{where}: field {key!r} must be a string, got {type(value).__name__}")
    return value


def _eos(tokenizer) -> str:
    eos = getattr(tokenizer, "eos_token", None)
    if not eos:
        raise SlmlabError(
            f"tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has no eos_token; completions need one to teach stopping"
        )
    return eos


def _messages(template: Template, input_text: str) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": template.system}] if template.system else []
    return messages + [{"role": "user", "content": template.user_text(input_text)}]


def _apply_chat(tokenizer, messages: list[dict], template: Template, *, add_generation_prompt: bool) -> str:
    if not getattr(tokenizer, "chat_template", None):
        raise TemplateError(
            f"template {template.name!r} is a chat template but tokenizer "
            f"{getattr(tokenizer, 'name_or_path', '')!r} has no chat template; use a text template such as v6"
        )
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    except Exception as exc:  # jinja raises its own errors, e.g. "system role not supported"
        raise TemplateError(f"template {template.name!r}: the tokenizer's chat template failed: {exc}") from None
    if not isinstance(text, str):
        raise TemplateError(f"template {template.name!r}: apply_chat_template returned {type(text).__name__}, not text")
    return text
