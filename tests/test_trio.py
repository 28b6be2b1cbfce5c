"""The trio: tools (safe, offline, deterministic), the pipeline's order and visibility, tool rounds,
errors in the transcript, verify-when-uncertain, adapters, training layout, evaluation and the CLI.

Most pipeline tests script the model's text (``pipeline.generate`` is replaced) so that what each
role sees can be asserted exactly; one test runs the real tiny-random model end to end.
"""

from __future__ import annotations

import ast
import inspect
import json
import re

import pytest

from slmlab.errors import SlmlabError
from slmlab.trio import pipeline
from slmlab.trio.margin import answer_margin, answer_span
from slmlab.trio.pipeline import TrioModel, TrioSettings, run, run_stages
from slmlab.trio.tools import (
    ToolBox,
    ToolExecutionError,
    calculate,
    convert,
    format_number,
)


@pytest.fixture(scope="module")
def box():
    return ToolBox.default()


# --------------------------------------------------------------------------- tools


def test_calculator_is_exact(box):
    assert calculate("17*23") == 391
    assert format_number(calculate("1/3+1/6")) == "0.5"
    assert format_number(calculate("1/3")) == "1/3 ≈ 0.3333333333"
    assert calculate("(2+3)*-4 // 3 % 5") == ((2 + 3) * -4 // 3) % 5
    assert calculate("2**10 - 0.5") == 1023.5
    assert calculate("6 × 7 ÷ 2 − 1") == 20
    call, result = box.call("calculator", expression="(12+30)*2")
    assert call.valid and result.ok and result.value == 84 and result.output == "84"


@pytest.mark.parametrize("expr, message", [
    ("__import__('os').system('true')", "function call"),
    ("x + 1", "name 'x'"),
    ("(1).real", "Attribute"),
    ("1/0", "division by zero"),
    ("2**100000", "too large"),
    ("9**9**9", "too large"),
    ("2^8", "write **"),
    ("2**0.5", "whole-number exponents"),
    ("1 +", "cannot read"),
    ("[1, 2]", "List"),
    ("1" * 600, "longer than"),
])
def test_calculator_refuses_everything_but_arithmetic(expr, message):
    with pytest.raises(ToolExecutionError, match=re.escape(message)):
        calculate(expr)


def test_calculator_never_calls_eval_or_exec():
    from slmlab.trio import tools

    tree = ast.parse(inspect.getsource(tools))
    called = {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    assert not called & {"eval", "exec", "compile"}


def test_unit_convert_wiki_and_solver(box):
    assert convert(1, "mi", "km") == pytest.approx(1.609344)
    assert convert(100, "degC", "degF") == 212
    assert convert(3.6, "MJ", "kWh") == 1
    _, result = box.call("unit_convert", value=10, **{"from": "km", "to": "mi"})
    assert result.ok and result.output == "10 km = 6.21371 mi"
    _, result = box.call("wiki_lookup", wiki="local", page="modus PONENS")
    assert result.ok and result.output.startswith("Modus ponens: ")
    _, result = box.call("solve_logic", puzzle="P→Q,Q?P")
    assert result.ok and result.value == "◐"


def test_the_wiki_glyph_claims_are_what_the_solver_says(box):
    from slmlab.data.logic import solve

    claims = [re.search(r"In glyphs: (\S+) is (\S)", text) for text in box.wiki.values()]
    claims = [m.groups() for m in claims if m]
    assert len(claims) >= 5
    for puzzle, glyph in claims:
        assert solve(puzzle) == glyph, puzzle


@pytest.mark.parametrize("text, error", [
    ('[web_search:{"query":"news"}]', "Unknown tool 'web_search'"),
    ('[calculator:{"expression": 1+}]', "not valid JSON"),
    ('[calculator:{"expr":"1+1"}]', "'expression' is a required property"),
    ('[calculator:{"expression":"1/0"}]', "division by zero"),
    ('[unit_convert:{"value":3,"from":"km","to":"kg"}]', "cannot convert km (length) to kg (mass)"),
    ('[unit_convert:{"value":3,"from":"parsec","to":"km"}]', "Unknown unit 'parsec'"),
    ('[wiki_lookup:{"wiki":"local","page":"Radiohed"}]', "Closest: Radiohead"),
    ('[solve_logic:{"puzzle":"P→→Q"}]', "P→→Q"),
    ('[calculator:{"expression":"2"}', "missing closing ']'"),
])
def test_bad_calls_give_clear_errors_never_exceptions(box, text, error):
    (call,) = box.parse(text)
    result = box.execute(call)
    assert not result.ok and error in result.error
    assert result.feedback().startswith("error: ")


def test_specialist_requests_execute_too(box):
    (call,) = box.parse('please SPECIALIST_REQUEST[calculator:{"expression":"6*7"}] thanks')
    assert call.specialist and box.execute(call).value == 42


# --------------------------------------------------------------------------- margin


def test_answer_span_prefers_the_answer_line_then_a_glyph_then_the_first_line():
    text = "Thinking ○ first.\nAnswer: ● — modus ponens\n"
    assert text[slice(*answer_span(text))] == "● — modus ponens"
    assert answer_span("so ◐ it is") == (3, 4)
    assert answer_span("  \n 391 \n") == (4, 7)
    assert answer_span("") is None
    call = '[calculator:{"expression":"1"}]'
    assert answer_span(call + "\n42", skip=[(0, len(call))]) == (len(call) + 1, len(call) + 3)


def test_answer_margin_is_the_mean_gap_over_the_answer_tokens(tokenizer):
    text = "Answer: ● yes"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    gaps = [float(i) for i in range(len(ids))]
    margin, answer = answer_margin(tokenizer, ids, gaps, text)
    assert answer == "● yes"
    # "Answer", ":" are outside the span; the " ●" token starts the glyph, so it counts.
    assert margin == pytest.approx(sum(gaps[2:]) / len(gaps[2:]))
    assert answer_margin(tokenizer, [], [], "") == (0.0, "")


# --------------------------------------------------------------------------- the pipeline, scripted


class Script:
    """Stands in for pipeline.generate: answers by the role tag in the prompt, records every call."""

    def __init__(self, tokenizer, dialectical, margin=5.0):
        self.tokenizer, self.dialectical, self.margin = tokenizer, list(dialectical), margin
        self.calls: list[tuple[str, str, object]] = []

    def __call__(self, tm, prompts, max_new_tokens, batch_size=8):
        out = []
        for prompt in prompts:
            role = re.match(r"\[(\w+)\]", prompt).group(1).lower()
            active = getattr(tm.model, "active_adapter", None) if tm.adapters else None
            self.calls.append((role, prompt, (active, _adapters_disabled(tm.model))))
            if role == "creative":
                text = "IDEA-7 maybe ○"
            elif role == "logical":
                text = "CRIT-9 ● by modus ponens"
            else:
                text = self.dialectical.pop(0) if len(self.dialectical) > 1 else self.dialectical[0]
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            out.append(pipeline._Gen(text, ids, [self.margin] * len(ids), 0.01))
        return out


def _adapters_disabled(model) -> bool | None:
    for module in model.modules():
        if hasattr(module, "lora_A"):
            return bool(module.disable_adapters)
    return None


def test_order_and_what_each_role_sees(tiny, monkeypatch):
    script = Script(tiny[1], ['[calculator:{"expression":"17*23"}]', "Answer: 391"])
    monkeypatch.setattr(pipeline, "generate", script)
    t = run("What is 17*23?", model=tiny)
    roles = [r for r, _, _ in script.calls]
    assert roles == ["creative", "logical", "dialectical", "dialectical"]
    creative, logical, first, second = (p for _, p, _ in script.calls)
    assert "What is 17*23?" in creative and "IDEA-7" not in creative
    assert "Thesis: IDEA-7 maybe ○" in logical and "CRIT-9" not in logical
    assert "Thesis: IDEA-7 maybe ○" in first and "Antithesis: CRIT-9 ● by modus ponens" in first
    assert "[solve_logic:" in first and "Tool results:" not in first
    # The call was executed and its result fed back into the next synthesis round.
    assert 'Tool results:\n[calculator:{"expression":"17*23"}] → 391' in second
    data = json.loads(json.dumps(t.to_dict(), ensure_ascii=False))
    assert [turn["role"] for turn in data["turns"]] == ["creative", "logical", "dialectical"]
    assert set(data) >= {"question", "turns", "answer"}
    for turn in data["turns"]:
        assert set(turn) >= {"role", "text", "tool_calls", "tool_results", "seconds"}
    synth = data["turns"][2]
    assert synth["tool_calls"][0]["name"] == "calculator" and synth["tool_results"][0]["value"] == 391
    assert data["answer"] == "391" and data["answer_source"] == "model"


def test_unknown_and_malformed_calls_are_errors_in_the_transcript(tiny, monkeypatch):
    script = Script(tiny[1], ['[web_search:{"query":"x"}] [calculator:{"expression": 1+}]', "Answer: ◐"])
    monkeypatch.setattr(pipeline, "generate", script)
    t = run("Is it raining?", model=tiny)
    synth = t.turn("dialectical")
    assert [c["name"] for c in synth["tool_calls"]] == ["web_search", "calculator"]
    assert [r["ok"] for r in synth["tool_results"]] == [False, False]
    assert "Unknown tool 'web_search'" in synth["tool_results"][0]["error"]
    assert "not valid JSON" in synth["tool_results"][1]["error"]
    assert "→ error: Unknown tool 'web_search'" in script.calls[-1][1]  # the errors were fed back too
    assert t.answer == "◐"


def test_tool_rounds_are_bounded(tiny, monkeypatch):
    script = Script(tiny[1], ['[calculator:{"expression":"1+1"}]'])
    monkeypatch.setattr(pipeline, "generate", script)
    t = run("What is 1+1?", model=tiny, max_rounds=1, verify_below=None)
    assert [r for r, _, _ in script.calls].count("dialectical") == 2
    results = t.turn("dialectical")["tool_results"]
    assert results[0]["ok"] and "not executed" in results[1]["error"]
    assert t.answer == "2" and t.answer_source == "tool"  # nothing but calls: the last good result answers


def test_no_tools_means_no_tool_list_and_no_execution(tiny, monkeypatch):
    script = Script(tiny[1], ['[calculator:{"expression":"1+1"}]'], margin=0.0)
    monkeypatch.setattr(pipeline, "generate", script)
    t = run("What is 1+1?", model=tiny, tools=False)
    assert "Tools (" not in script.calls[-1][1]
    assert t.turn("dialectical")["tool_calls"] == [] and not t.verified


@pytest.mark.parametrize("margin, verify_below, answer, source", [
    (0.1, 1.0, "●", "verifier"),
    (5.0, 1.0, "○", "model"),
    (0.1, None, "○", "model"),
])
def test_verify_when_uncertain(tiny, monkeypatch, margin, verify_below, answer, source):
    monkeypatch.setattr(pipeline, "generate", Script(tiny[1], ["Answer: ○"], margin=margin))
    t = run("P→Q,P?Q", model=tiny, verify_below=verify_below)
    assert (t.answer, t.answer_source) == (answer, source)
    assert t.answer_margin == pytest.approx(margin)
    auto = [c for c in t.turn("dialectical")["tool_calls"] if c["auto"]]
    assert len(auto) == (source == "verifier")


def test_checkable_questions():
    assert pipeline.checkable("P→Q,P?Q") == ("solve_logic", {"puzzle": "P→Q,P?Q"})
    assert pipeline.checkable("What is (12+3)*4?") == ("calculator", {"expression": "(12+3)*4"})
    assert pipeline.checkable("Is the lamp on?") is None


def test_stage_reuse_shares_theses(tiny, monkeypatch):
    script = Script(tiny[1], ["Answer: ●"])
    monkeypatch.setattr(pipeline, "generate", script)
    tm = TrioModel(*tiny)
    first = run_stages(tm, ["P?P", "Q?Q"], settings=TrioSettings(tools=False))
    shared = ([t.turns[0] for t in first], [t.turns[1] for t in first])
    script.calls.clear()
    again = run_stages(tm, ["P?P", "Q?Q"], thesis_antithesis=shared, settings=TrioSettings())
    assert {r for r, _, _ in script.calls} == {"dialectical"}
    assert again[1].turns[0] is shared[0][1]


def test_settings_are_checked():
    with pytest.raises(SlmlabError, match="unknown role"):
        TrioSettings(max_new_tokens={"critic": 3})
    with pytest.raises(SlmlabError, match="max_rounds"):
        TrioSettings(max_rounds=-1)


# --------------------------------------------------------------------------- the real tiny model


def test_tiny_random_end_to_end_json(tiny):
    t = run("What is 6*7?", model=tiny, max_new_tokens=3, verify_below=1e9)
    data = json.loads(json.dumps(t.to_dict(), ensure_ascii=False, allow_nan=False))
    assert [turn["role"] for turn in data["turns"]] == ["creative", "logical", "dialectical"]
    assert all(turn["tokens"] <= 3 for turn in data["turns"])
    assert data["answer"] == "42" and data["verified"]  # the calculator verified the (random) answer


# --------------------------------------------------------------------------- adapters


@pytest.fixture
def adapters_dir(tmp_path, tokenizer):
    from peft import LoraConfig, get_peft_model

    from slmlab.models import build_tiny_random

    for role, seed in (("creative", 1), ("dialectical", 2)):
        model = get_peft_model(build_tiny_random(tokenizer, seed=seed),
                               LoraConfig(r=2, target_modules=["q_proj"], task_type="CAUSAL_LM"))
        model.save_pretrained(tmp_path / role / "adapter")
    manifest = {"model": "tiny-random", "roles": {r: {"adapter": f"{r}/adapter"} for r in ("creative", "dialectical")}}
    (tmp_path / "trio.json").write_text(json.dumps(manifest))
    return tmp_path


def test_role_adapters_are_switched_on_one_base(adapters_dir, tokenizer, monkeypatch):
    from slmlab.models import load

    script = Script(tokenizer, ["Answer: ●"])
    monkeypatch.setattr(pipeline, "generate", script)
    tm = TrioModel(*load("tiny-random"))
    t = run("P?P", model=tm, adapters=adapters_dir, tools=False)
    states = {role: state for role, _, state in script.calls}
    assert states["creative"] == ("creative", False)
    assert states["logical"][1] is True  # no logical adapter: the base model answers
    assert states["dialectical"] == ("dialectical", False)
    assert set(tm.model.peft_config) == {"creative", "dialectical"} and t.answer == "●"


def test_missing_or_broken_adapter_dirs_are_clear_errors(tmp_path):
    with pytest.raises(SlmlabError, match="no trio.json here; make one with `slmlab trio train"):
        pipeline.read_manifest(tmp_path)
    (tmp_path / "trio.json").write_text(json.dumps({"model": "tiny-random", "roles": {"critic": {}}}))
    with pytest.raises(SlmlabError, match="unknown role 'critic'"):
        pipeline.read_manifest(tmp_path)
    (tmp_path / "trio.json").write_text(json.dumps({"model": "tiny-random", "roles": {"logical": {"adapter": "x"}}}))
    with pytest.raises(SlmlabError, match="no adapter directory"):
        pipeline.read_manifest(tmp_path)


# --------------------------------------------------------------------------- examples and training


def test_generated_role_examples_check_out(box):
    from slmlab.data.glyphs import first_glyph
    from slmlab.data.logic import solve
    from slmlab.data.tools import call_matches
    from slmlab.trio.examples import make_examples

    records = make_examples(120, seed=3)
    assert len(records) == 120 and make_examples(120, seed=3) == records
    assert {r["role"] for r in records} == {"creative", "logical", "dialectical"}
    for r in records:
        if r["kind"] == "logic":
            assert solve(r["puzzle"]) == r["answer"]
            if r["role"] == "logical" or r["output"].startswith("Answer:"):
                assert first_glyph(r["output"]) == r["answer"]
        calls = box.parse(r["output"])
        if calls:
            assert r["role"] == "dialectical" and all(c.valid and box.execute(c).ok for c in calls)
            if "expected_call" in r:
                assert call_matches(calls[0], r["expected_call"])
    assert any(box.parse(r["output"]) for r in records)


def test_train_splits_by_role_and_writes_the_manifest(tmp_path, monkeypatch):
    from slmlab.data.logic import canonical_key
    from slmlab.data.recipes import in_test_split
    from slmlab.train import loop
    from slmlab.trio.train import train

    configs = []

    def fake_run(cfg):
        configs.append(cfg)
        return loop.RunResult(cfg.run_dir, cfg.max_steps, [1.5], None, "completed")

    monkeypatch.setattr(loop, "run", fake_run)
    manifest = train(tmp_path / "trio", model="tiny-random", count=60, examples=40, max_steps=2)
    assert [c.name for c in configs] == ["creative", "logical", "dialectical"]
    assert all(c.max_steps == 2 and c.adapter.kind == "lora" and c.model == "tiny-random" for c in configs)
    written = json.loads((tmp_path / "trio" / "trio.json").read_text())
    assert written == manifest and list(written["roles"]) == ["creative", "logical", "dialectical"]
    for role in written["roles"]:
        rows = [json.loads(line) for line in (tmp_path / "trio" / "data" / f"{role}.jsonl").read_text().splitlines()]
        assert rows and all(r["role"] == role for r in rows)
        assert any(r["category"].startswith("trio-") for r in rows)
        keys = [r["puzzle"] for r in rows if r.get("category", "").startswith("trio-") and "puzzle" in r]
        assert not any(in_test_split("logic:" + canonical_key(k), 0, 0.1) for k in keys)
    with pytest.raises(SlmlabError, match="not empty|exists"):
        train(tmp_path / "trio", model="tiny-random", count=60, examples=40)


# --------------------------------------------------------------------------- evaluation


def test_eval_compares_the_three_conditions(tiny, tmp_path, monkeypatch):
    from slmlab.trio.evaluate import evaluate

    monkeypatch.setattr(pipeline, "generate", Script(tiny[1], ["Answer: ●"], margin=0.2))
    suite = tmp_path / "suite.yaml"
    suite.write_text("name: trio\ndataset: {recipe: trio-roles, split: test, count: 300}\nlimit: 6\nverify_below: 1.0\n")
    result = evaluate(model=tiny, suite=suite, out=tmp_path / "r.json")
    assert list(result["conditions"]) == ["single", "trio", "trio+tools"]
    assert json.loads((tmp_path / "r.json").read_text())["n"] == result["n"] == 6
    acc = {c: e["accuracy"] for c, e in result["conditions"].items()}
    expected_hits = sum(s["expected"] == "●" for s in result["samples"])
    assert acc["single"]["k"] == acc["trio"]["k"] == expected_hits
    tools = result["conditions"]["trio+tools"]["tools"]
    # The glyph questions are verified by the solver (margin 0.2 < 1.0); English ones cannot be.
    pure = sum(s["render"] == "pure" for s in result["samples"])
    assert tools["verifier_answered"]["k"] == pure and tools["calls_written"] == 0
    lo, hi = acc["trio"]["ci95"]
    assert 0 <= lo <= acc["trio"]["rate"] <= hi <= 1
    assert set(result["roles"]) == {"creative", "logical", "dialectical (trio)", "dialectical (trio+tools)"}
    assert result["roles"]["dialectical (trio)"]["has_answer"]["rate"] == 1.0


def test_shipped_suite_loads():
    from slmlab.trio.evaluate import load_trio_suite

    suite = load_trio_suite()
    assert suite.name == "trio" and suite.conditions == ["single", "trio", "trio+tools"]


# --------------------------------------------------------------------------- CLI


def test_cli_help_has_examples():
    from typer.testing import CliRunner

    from slmlab.trio.cli import trio_app

    runner = CliRunner()
    for command in ("train", "run", "eval"):
        result = runner.invoke(trio_app, [command, "--help"], terminal_width=200)
        assert result.exit_code == 0 and "Example:" in result.output


def test_cli_run_json_on_tiny_random():
    from typer.testing import CliRunner

    from slmlab.trio.cli import trio_app

    result = CliRunner().invoke(trio_app, ["run", "P→Q,P?Q", "--model", "tiny-random", "--json",
                                           "--max-new-tokens", "2", "--verify-below", "1e9"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout.strip().splitlines()[-1])
    assert [t["role"] for t in data["turns"]] == ["creative", "logical", "dialectical"]
    assert data["answer"] == "●" and data["answer_source"] == "verifier"
