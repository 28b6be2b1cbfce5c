"""The creative → logical → dialectical pipeline over one base model, with tools.

Order and visibility (the contract the tests pin):

1. **creative** sees the question and writes a *thesis*;
2. **logical** sees the question and the thesis and writes an *antithesis*;
3. **dialectical** sees the question, the thesis, the antithesis and (with tools on) the
   tool list, and writes the *synthesis*. Tool calls in it (``[name:{json}]`` or
   ``SPECIALIST_REQUEST[name:{json}]``) are parsed by :func:`slmlab.data.tools.parse_tool_calls`
   against the trio registry and executed by :class:`slmlab.trio.tools.ToolBox`; the results
   (or the errors: unknown tool, bad JSON, schema violations, failures) are appended to its
   input under ``Tool results:`` and it writes again — at most ``max_rounds`` times. Calls
   written after the last round are listed with a "not executed" error.
4. **verify when uncertain**: with tools on, when the synthesis's answer margin
   (:mod:`slmlab.trio.margin`) is below ``verify_below`` and the question itself can be
   checked — it parses as a glyph puzzle (``solve_logic``) or contains an arithmetic
   expression (``calculator``) — the tool is called and its value becomes the answer
   (``answer_source = "verifier"``); the synthesis text stays as written.

Each role's prompt is its shipped template (``resources/roles/{creative,logical,dialectical}.yaml``)
around the input built by :func:`creative_input`, :func:`logical_input` and
:func:`dialectical_input`; :mod:`slmlab.trio.examples` trains on exactly these inputs.

One base model is in memory. Role adapters (from ``slmlab trio train``) are loaded into one
PEFT model under the role names and switched with ``set_adapter``; a role without an adapter
runs with adapters disabled, so prompts-only roles need no adapters at all. Decoding is greedy.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slmlab.errors import SlmlabError
from slmlab.trio.margin import answer_margin
from slmlab.trio.tools import ToolBox, ToolResult, call_to_dict

ROLES = ("creative", "logical", "dialectical")
# A model that starts writing the next section or example is cut there.
STOP = ["[CREATIVE]", "[LOGICAL]", "[DIALECTICAL]", "[THESIS]", "[ANTITHESIS]", "[SYNTHESIS]",
        "\nQuestion:", "\nThesis:", "\nAntithesis:", "Tool results:"]
MAX_CALLS_PER_ROUND = 4
TOOLS_HEADER = "Tools (to use one, write its call and stop):"
RESULTS_HEADER = "Tool results:"
DEFAULT_MAX_NEW_TOKENS = {"creative": 64, "logical": 64, "dialectical": 64}


# --------------------------------------------------------------------------- role inputs


def creative_input(question: str) -> str:
    return f"Question: {question.strip()}"


def logical_input(question: str, thesis: str) -> str:
    return f"Question: {question.strip()}\n\nThesis: {thesis.strip()}"


def dialectical_input(question: str, thesis: str, antithesis: str, tools: str | None = None,
                      results: list[tuple[str, str]] | None = None) -> str:
    """The synthesis's input; ``tools`` is :meth:`ToolBox.describe`, ``results`` (call text, feedback) pairs."""
    parts = [f"Question: {question.strip()}", f"Thesis: {thesis.strip()}", f"Antithesis: {antithesis.strip()}"]
    if tools:
        parts.append(f"{TOOLS_HEADER}\n{tools}")
    if results:
        parts.append(RESULTS_HEADER + "\n" + "\n".join(f"{raw} → {feedback}" for raw, feedback in results))
    return "\n\n".join(parts)


def single_input(question: str) -> str:
    """The single-model baseline's input: the question alone, in the synthesis template."""
    return f"Question: {question.strip()}"


# --------------------------------------------------------------------------- the model


@dataclass
class TrioModel:
    """One base model (optionally a PEFT model holding one adapter per role) and its tokenizer."""

    model: Any
    tokenizer: Any
    spec: str = "<in memory>"
    adapters: dict[str, str] = field(default_factory=dict)  # role -> adapter directory

    @classmethod
    def load(cls, spec: str | None = None, adapters: str | Path | None = None) -> TrioModel:
        """Load ``spec`` (default: the adapters' base model, else smollm2-135m) and the role adapters in ``adapters``."""
        from slmlab.console import quiet_transformers
        from slmlab.models import EMBEDDED_SPEC, load

        quiet_transformers()
        manifest = read_manifest(adapters) if adapters is not None else None
        spec = spec or (manifest["model"] if manifest else EMBEDDED_SPEC)
        model, tokenizer = load(spec)
        tm = cls(model, tokenizer, spec)
        if manifest:
            tm.load_adapters(manifest)
        return tm

    def load_adapters(self, manifest: dict) -> None:
        from peft import PeftModel

        for role, path in manifest["adapters"].items():
            if isinstance(self.model, PeftModel):
                self.model.load_adapter(path, adapter_name=role)
            else:
                self.model = PeftModel.from_pretrained(self.model, path, adapter_name=role)
            self.adapters[role] = path
        self.model.eval()

    @contextmanager
    def role(self, name: str | None) -> Iterator[None]:
        """Generate as ``name``: its adapter active, or no adapter when it has none (``None``: the base model)."""
        if name in self.adapters:
            self.model.set_adapter(name)
            yield
        elif self.adapters:
            with self.model.disable_adapter():
                yield
        else:
            yield


def read_manifest(directory: str | Path) -> dict:
    """``DIR/trio.json`` with adapter paths resolved and checked: ``{"model", "adapters": {role: path}}``."""
    directory = Path(directory)
    path = directory / "trio.json"
    if not path.is_file():
        raise SlmlabError(f"{directory}: no trio.json here; make one with `slmlab trio train -o {directory}`")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise SlmlabError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("roles"), dict) or not isinstance(data.get("model"), str):
        raise SlmlabError(f"{path}: expected {{\"model\": SPEC, \"roles\": {{ROLE: {{\"adapter\": PATH}}}}}}")
    adapters = {}
    for role, entry in data["roles"].items():
        if role not in ROLES:
            raise SlmlabError(f"{path}: unknown role {role!r}; roles are {', '.join(ROLES)}")
        adapter = directory / entry.get("adapter", "") if isinstance(entry, dict) else None
        if adapter is None or not (adapter / "adapter_config.json").is_file():
            raise SlmlabError(f"{path}: role {role!r} names no adapter directory with adapter_config.json")
        adapters[role] = str(adapter)
    return {"model": data["model"], "adapters": adapters}


# --------------------------------------------------------------------------- generation


@dataclass
class _Gen:
    text: str
    ids: list[int]
    margins: list[float]  # top1 - top2 logit per generated token
    seconds: float


def _cut(text: str) -> str:
    cuts = [text.find(s) for s in STOP if s in text]
    return text[: min(cuts)] if cuts else text


def generate(tm: TrioModel, prompts: list[str], max_new_tokens: int, batch_size: int = 8) -> list[_Gen]:
    """Greedy, batched (left padding); per-token top1−top2 logit margins from the raw logits.

    A ``tm`` with its own ``generate_prompts(prompts, max_new_tokens)`` generates there instead
    (the server's engine, :mod:`slmlab.serve.trio`); it returns the same ``_Gen`` records.
    """
    own = getattr(tm, "generate_prompts", None)
    if own is not None:
        return own(prompts, max_new_tokens)
    import torch

    tok = tm.tokenizer
    side, tok.padding_side = tok.padding_side, "left"
    out: list[_Gen] = []
    try:
        for i in range(0, len(prompts), batch_size):
            chunk = prompts[i: i + batch_size]
            start = time.perf_counter()
            enc = tok(chunk, return_tensors="pt", padding=True, add_special_tokens=False)
            with torch.no_grad():
                res = tm.model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, temperature=None,
                                        top_p=None, top_k=None, pad_token_id=tok.pad_token_id,
                                        eos_token_id=tok.eos_token_id, output_logits=True,
                                        return_dict_in_generate=True)
            seq = res.sequences[:, enc["input_ids"].shape[1]:]
            top2 = torch.stack(res.logits, dim=1).float().topk(2, dim=-1).values  # [batch, steps, 2]
            gaps = (top2[..., 0] - top2[..., 1]).tolist()
            seconds = (time.perf_counter() - start) / len(chunk)
            for row in range(len(chunk)):
                ids = seq[row].tolist()
                if tok.eos_token_id in ids:
                    ids = ids[: ids.index(tok.eos_token_id)]
                text = _cut(tok.decode(ids, skip_special_tokens=True))
                out.append(_Gen(text.strip(), ids, gaps[row][: len(ids)], seconds))
    finally:
        tok.padding_side = side
    return out


# --------------------------------------------------------------------------- transcript


@dataclass
class Transcript:
    question: str
    turns: list[dict]
    answer: str
    answer_source: str  # "model", "tool" (a result the synthesis asked for) or "verifier"
    answer_margin: float
    verified: bool
    model: str

    def to_dict(self) -> dict:
        return {"question": self.question, "turns": self.turns, "answer": self.answer,
                "answer_source": self.answer_source, "answer_margin": round(self.answer_margin, 4),
                "verified": self.verified, "model": self.model}

    def turn(self, role: str) -> dict:
        return next(t for t in self.turns if t["role"] == role)


def _turn(role: str, prompt: str, gen: _Gen) -> dict:
    return {"role": role, "text": gen.text, "tool_calls": [], "tool_results": [], "seconds": round(gen.seconds, 3),
            "tokens": len(gen.ids), "prompt": prompt}


# --------------------------------------------------------------------------- checkable questions

_ARITHMETIC = re.compile(r"[-(]*\d[\d.]*(?:\s*(?:\*\*|//|[-+*/×÷%])\s*[(]*\s*\d[\d.]*\)*)+\)*")


def checkable(question: str) -> tuple[str, dict] | None:
    """The tool call that can check an answer to ``question``: the solver on a glyph puzzle, or the calculator."""
    from slmlab.data.glyphs import parse_puzzle

    text = question.strip()
    try:
        parse_puzzle(text)
        return "solve_logic", {"puzzle": text}
    except SlmlabError:
        pass
    m = _ARITHMETIC.search(text)
    if m:
        return "calculator", {"expression": m.group(0).strip()}
    return None


# --------------------------------------------------------------------------- the pipeline


@dataclass
class TrioSettings:
    tools: bool = True
    max_rounds: int = 2
    verify_below: float | None = 1.0  # answer margin (nats) under which the verifier is called; None: never
    max_new_tokens: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_MAX_NEW_TOKENS))
    batch_size: int = 8

    def __post_init__(self) -> None:
        if self.max_rounds < 0:
            raise SlmlabError(f"max_rounds must be 0 or more, got {self.max_rounds}")
        unknown = [r for r in self.max_new_tokens if r not in ROLES]
        if unknown:
            raise SlmlabError(f"max_new_tokens: unknown role(s) {unknown}; roles are {', '.join(ROLES)}")
        self.max_new_tokens = {**DEFAULT_MAX_NEW_TOKENS, **self.max_new_tokens}


def _templates() -> dict:
    from slmlab.data.roles import load_template

    return {role: load_template(role) for role in ROLES}


def _prompt(template, text: str, tokenizer) -> str:
    from slmlab.data.roles import render_prompt

    return render_prompt(text, template, tokenizer)


def run_stages(tm: TrioModel, questions: list[str], *, thesis_antithesis: tuple[list[dict], list[dict]] | None = None,
               settings: TrioSettings | None = None, toolbox: ToolBox | None = None) -> list[Transcript]:
    """The pipeline for several questions, stage by stage (each stage one batched generation).

    ``thesis_antithesis``: reuse creative and logical turns from an earlier call (they do not
    depend on the tool settings), so an evaluation can compare trio with and without tools
    on the same theses.
    """
    settings = settings or TrioSettings()
    toolbox = toolbox or (ToolBox.default() if settings.tools else None)
    templates = _templates()
    tok = tm.tokenizer
    if thesis_antithesis is None:
        creative = _stage(tm, "creative", templates, [creative_input(q) for q in questions], settings)
        theses = [t["text"] for t in creative]
        logical = _stage(tm, "logical", templates, [logical_input(q, th) for q, th in zip(questions, theses)], settings)
    else:
        creative, logical = thesis_antithesis
    tools_text = toolbox.describe() if settings.tools else None
    dialectical = [{"role": "dialectical", "text": "", "tool_calls": [], "tool_results": [], "seconds": 0.0,
                    "rounds": []} for _ in questions]
    results: list[list[tuple[str, str]]] = [[] for _ in questions]
    last: dict[int, _Gen] = {}
    active = list(range(len(questions)))
    for round_no in range(settings.max_rounds + 1):
        inputs = [dialectical_input(questions[i], creative[i]["text"], logical[i]["text"], tools_text, results[i])
                  for i in active]
        prompts = [_prompt(templates["dialectical"], x, tok) for x in inputs]
        with tm.role("dialectical"):
            gens = generate(tm, prompts, settings.max_new_tokens["dialectical"], settings.batch_size)
        still = []
        for i, prompt, gen in zip(active, prompts, gens):
            last[i] = gen
            turn = dialectical[i]
            record = {"text": gen.text, "tool_calls": [], "tool_results": [], "seconds": round(gen.seconds, 3),
                      "tokens": len(gen.ids), "prompt": prompt}
            turn["rounds"].append(record)
            turn["seconds"] = round(turn["seconds"] + gen.seconds, 3)
            turn["text"], turn["prompt"], turn["tokens"] = gen.text, prompt, len(gen.ids)
            if not settings.tools:
                continue
            calls = toolbox.parse(gen.text)[:MAX_CALLS_PER_ROUND]
            for call in calls:
                if round_no < settings.max_rounds:
                    result = toolbox.execute(call)
                else:
                    result = ToolResult(call.name, False, error=f"not executed: the limit of {settings.max_rounds} "
                                        "tool round(s) was reached")
                record["tool_calls"].append(call_to_dict(call))
                record["tool_results"].append(result.to_dict())
                results[i].append((call.raw, result.feedback()))
            if calls and round_no < settings.max_rounds:
                still.append(i)
        active = still
        if not active:
            break
    out = []
    for i, question in enumerate(questions):
        turn = dialectical[i]
        for record in turn["rounds"]:
            turn["tool_calls"] += record["tool_calls"]
            turn["tool_results"] += record["tool_results"]
        out.append(_finish(tm, question, [creative[i], logical[i], turn], last[i], settings, toolbox))
    return out


def _stage(tm: TrioModel, role: str, templates: dict, inputs: list[str], settings: TrioSettings) -> list[dict]:
    prompts = [_prompt(templates[role], x, tm.tokenizer) for x in inputs]
    with tm.role(role):
        gens = generate(tm, prompts, settings.max_new_tokens[role], settings.batch_size)
    return [_turn(role, p, g) for p, g in zip(prompts, gens)]


def _finish(tm: TrioModel, question: str, turns: list[dict], gen: _Gen, settings: TrioSettings,
            toolbox: ToolBox | None) -> Transcript:
    calls = toolbox.parse(gen.text) if toolbox is not None else []
    margin, answer = answer_margin(tm.tokenizer, gen.ids, gen.margins, gen.text, [(c.start, c.end) for c in calls])
    source, verified = "model", False
    synthesis = turns[2]
    if not answer:
        ok = [r for r in synthesis["tool_results"] if r["ok"]]
        if ok:
            answer, source = str(ok[-1]["value"]), "tool"
    if settings.tools and settings.verify_below is not None and margin < settings.verify_below:
        check = checkable(question)
        if check is not None:
            call, result = toolbox.call(check[0], **check[1])
            synthesis["tool_calls"].append(call_to_dict(call, auto=True))
            synthesis["tool_results"].append(result.to_dict())
            synthesis["verify"] = {"margin": round(margin, 4), "below": _finite(settings.verify_below), "tool": check[0]}
            if result.ok:
                answer, source, verified = str(result.value), "verifier", True
    return Transcript(question, turns, answer, source, margin, verified, tm.spec)


def _finite(x: float) -> float | str:
    return x if math.isfinite(x) else str(x)  # strict JSON has no Infinity


def run_many(questions: list[str], *, model: str | TrioModel | tuple | None = None, adapters: str | Path | None = None,
             settings: TrioSettings | None = None, toolbox: ToolBox | None = None) -> list[Transcript]:
    """:func:`run` for several questions, batched stage by stage."""
    return run_stages(_as_trio_model(model, adapters), list(questions), settings=settings, toolbox=toolbox)


def run(question: str, *, model: str | TrioModel | tuple | None = None, adapters: str | Path | None = None,
        tools: bool = True, max_rounds: int = 2, verify_below: float | None = 1.0,
        max_new_tokens: dict[str, int] | int | None = None, toolbox: ToolBox | None = None) -> Transcript:
    """Ask the trio one question; returns the :class:`Transcript` (``.to_dict()`` is the ``--json`` object).

    ``model``: a spec (default: the adapters' base, else smollm2-135m), a loaded :class:`TrioModel`,
    or a ``(model, tokenizer)`` pair. ``adapters``: a ``slmlab trio train`` output directory.
    ``verify_below``: the answer-margin threshold in nats for calling the verifier (None: never).
    """
    if isinstance(max_new_tokens, int):
        max_new_tokens = {r: max_new_tokens for r in ROLES}
    settings = TrioSettings(tools=tools, max_rounds=max_rounds, verify_below=verify_below,
                            max_new_tokens=max_new_tokens or {})
    return run_many([question], model=model, adapters=adapters, settings=settings, toolbox=toolbox)[0]


def _as_trio_model(model, adapters) -> TrioModel:
    if isinstance(model, TrioModel):
        if adapters is not None:
            model.load_adapters(read_manifest(adapters))
        return model
    if isinstance(model, tuple):
        name = getattr(model[0].config, "name_or_path", "") or "<in memory>"
        tm = TrioModel(model[0], model[1], name)
        if adapters is not None:
            tm.load_adapters(read_manifest(adapters))
        return tm
    return TrioModel.load(model, adapters)


def single(tm: TrioModel, questions: list[str], max_new_tokens: int = 64, batch_size: int = 8) -> list[dict]:
    """The baseline: the base model (no adapter) answers each question once, in the synthesis template."""
    template = _templates()["dialectical"]
    prompts = [_prompt(template, single_input(q), tm.tokenizer) for q in questions]
    with tm.role(None):
        gens = generate(tm, prompts, max_new_tokens, batch_size)
    out = []
    for gen in gens:
        margin, answer = answer_margin(tm.tokenizer, gen.ids, gen.margins, gen.text)
        out.append({"text": gen.text, "answer": answer, "answer_margin": margin, "seconds": gen.seconds,
                    "tokens": len(gen.ids)})
    return out
