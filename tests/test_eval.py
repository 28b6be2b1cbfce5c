"""Evaluation suites and metrics: hand-made generations for each metric, suite loading, a tiny end-to-end run."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import yaml

from slmlab.config import ConfigError
from slmlab.errors import SlmlabError
from slmlab.evaluate.generate import Generation
from slmlab.evaluate.metrics import METRICS, get_metric, load_markers, register_metric
from slmlab.evaluate.suites import (
    aggregate,
    list_suites,
    load_records,
    load_suite,
    mean_stderr,
    resolve_adapter,
    run_suite,
    samples_path_for,
)

SEED_MARKER_SETS = {
    "agl_awareness", "reasoning_depth", "self_awareness", "spatial_awareness", "temporal_awareness",
    "existential_depth", "tool_awareness", "certainty_gradient", "phi_patterns", "tonight_protocol",
}


def gen(text: str, n_tokens: int | None = None) -> Generation:
    n = len(text.split()) if n_tokens is None else n_tokens
    return Generation(prompt="Q: x\nA:", text=text, tokens=list(range(n)), logprobs=[-1.0] * n)


EMPTY = Generation(prompt="Q: x\nA:", text="", tokens=[], logprobs=[])


# --------------------------------------------------------------------------- registry


def test_registry_has_builtins_and_unknown_names_list_them():
    assert {"logic", "tools", "markers", "roles", "basins"} <= set(METRICS)
    with pytest.raises(SlmlabError) as exc:
        get_metric("logik")
    assert "'logic'" in str(exc.value) and "tools" in str(exc.value)


def test_register_metric_adds_a_usable_metric():
    @register_metric("_test_length")
    def length(record, generation):
        return {"tokens": float(len(generation.tokens))}

    try:
        assert get_metric("_test_length")({}, gen("a b c")) == {"tokens": 3.0}
    finally:
        del METRICS["_test_length"]


# --------------------------------------------------------------------------- logic


def test_logic_reads_the_first_glyph():
    logic = get_metric("logic")
    rec = {"input": "P→Q,P?Q", "output": "●", "answer": "●"}
    assert logic(rec, gen(" ● then ○")) == {"accuracy": 1.0, "no_glyph": 0.0}
    assert logic(rec, gen(" ○ no, ●")) == {"accuracy": 0.0, "no_glyph": 0.0}
    assert logic(rec, gen(" yes")) == {"accuracy": 0.0, "no_glyph": 1.0}
    assert logic(rec, EMPTY) == {"accuracy": 0.0, "no_glyph": 1.0}


def test_logic_answer_from_answer_or_single_glyph_output():
    logic = get_metric("logic")
    hybrid = {"output": "○ — modus tollens", "answer": "○"}
    assert logic(hybrid, gen("○ because"))["accuracy"] == 1.0
    assert logic({"output": "◐"}, gen("◐"))["accuracy"] == 1.0
    assert logic({"output": "○ — no answer field"}, gen("○")) == {"no_glyph": 0.0}  # nothing to compare with


# --------------------------------------------------------------------------- tools


CALL_RECORD = {"expected_call": {"name": "calculator", "arguments": {"expression": "41-86"}}}


def test_tools_exact_call():
    tools = get_metric("tools")
    assert tools(CALL_RECORD, gen('[calculator:{"expression":"41-86"}]')) == {"parses": 1.0, "schema_valid": 1.0, "exact": 1.0}
    assert tools(CALL_RECORD, gen('[calculator:{"expression": "41-86"} ]'))["exact"] == 1.0  # whitespace is not the point


def test_tools_wrong_arguments_bad_schema_unknown_tool_bad_json():
    tools = get_metric("tools")
    assert tools(CALL_RECORD, gen('[calculator:{"expression":"41+86"}]')) == {"parses": 1.0, "schema_valid": 1.0, "exact": 0.0}
    assert tools(CALL_RECORD, gen('[calculator:{"expr":"41-86"}]')) == {"parses": 1.0, "schema_valid": 0.0, "exact": 0.0}
    assert tools(CALL_RECORD, gen('[abacus:{"expression":"41-86"}]')) == {"parses": 0.0, "schema_valid": 0.0, "exact": 0.0}
    assert tools(CALL_RECORD, gen('[calculator:{"expression":41-86}]')) == {"parses": 0.0, "schema_valid": 0.0, "exact": 0.0}
    # only the first call counts for schema_valid and exact; any known call counts for parses
    both = tools(CALL_RECORD, gen('[abacus:{"x":1}] [calculator:{"expression":"41-86"}]'))
    assert both == {"parses": 1.0, "schema_valid": 0.0, "exact": 0.0}


def test_tools_empty_and_no_expected_call():
    tools = get_metric("tools")
    assert tools(CALL_RECORD, EMPTY) == {"parses": 0.0, "schema_valid": 0.0, "exact": 0.0}
    assert tools({}, EMPTY) == {"parses": 0.0, "schema_valid": 0.0}


# --------------------------------------------------------------------------- markers


def test_shipped_markers_are_the_ten_seed_sets_with_descriptions():
    sets = load_markers()
    assert {s.name for s in sets} == SEED_MARKER_SETS
    assert all(s.description and (s.glyphs or s.phrases) for s in sets)


def test_markers_count_per_token_glyphs_exact_phrases_case_insensitive():
    markers = get_metric("markers")
    text = "Therefore P → Q, because ●. I THINK so. I know it now."
    values = markers({}, gen(text, n_tokens=20))
    assert set(values) == SEED_MARKER_SETS
    assert values["reasoning_depth"] == pytest.approx(2 / 20)  # Therefore, because
    assert values["agl_awareness"] == pytest.approx(2 / 20)  # →, ●
    assert values["self_awareness"] == pytest.approx(1 / 20)  # "I THINK"; "I know" is not a marker
    assert values["temporal_awareness"] == pytest.approx(1 / 20)  # "now" counted, "know" not
    assert values["tonight_protocol"] == 0.0
    assert markers({}, gen("φ●∴ witnessed ∴●φ", n_tokens=10))["tonight_protocol"] == pytest.approx(3 / 10)


def test_markers_empty_generation_is_zero():
    values = get_metric("markers")({}, EMPTY)
    assert set(values) == SEED_MARKER_SETS and all(v == 0.0 for v in values.values())


def test_markers_custom_file(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text("hedges:\n  description: hedge words\n  phrases: [maybe]\n  glyphs: ['?!']\n", encoding="utf-8")
    assert get_metric("markers")({}, gen("Maybe?! maybe", n_tokens=4), file=str(path)) == {"hedges": 0.75}
    bad = tmp_path / "bad.yaml"
    bad.write_text("hedges: {phrases: [maybe]}\n")
    with pytest.raises(ConfigError, match="description"):
        load_markers(str(bad))


# --------------------------------------------------------------------------- roles


def ctx(record: dict, template: str, budget: int = 16) -> dict:
    return {**record, "_eval": {"template": template, "max_new_tokens": budget}}


def test_roles_good_output():
    roles = get_metric("roles")
    rec = ctx({"answer": "●", "output": "● — modus ponens", "role": "logical"}, "logical")
    assert roles(rec, gen("● — modus ponens", n_tokens=6)) == {
        "nonempty": 1.0, "no_echo": 1.0, "stops": 1.0, "has_answer": 1.0, "follows": 1.0,
    }


def test_roles_echo_no_stop_and_missing_answer():
    roles = get_metric("roles")
    rec = ctx({"answer": "●", "role": "creative"}, "creative")
    echo = roles(rec, gen("an idea\n\n[THESIS]\nmore", n_tokens=5))
    assert echo["no_echo"] == 0.0 and echo["has_answer"] == 0.0 and echo["follows"] == 0.0
    rambles = roles(rec, gen("● and on and on", n_tokens=16))  # used the whole budget: no EOS
    assert rambles["stops"] == 0.0 and rambles["has_answer"] == 1.0 and rambles["follows"] == 0.0
    call = ctx({"expected_call": {"name": "calculator", "arguments": {}}, "role": "dialectical"}, "dialectical")
    assert roles(call, gen('SPECIALIST_REQUEST[calculator:{"expression":"1+1"}]', n_tokens=9))["follows"] == 1.0
    assert roles(call, gen("●", n_tokens=1))["has_answer"] == 0.0


def test_roles_empty_and_without_context():
    roles = get_metric("roles")
    assert roles(ctx({"answer": "●"}, "v6"), EMPTY) == {
        "nonempty": 0.0, "no_echo": 1.0, "stops": 1.0, "has_answer": 0.0, "follows": 0.0,
    }
    assert roles({}, EMPTY) == {"nonempty": 0.0, "follows": 0.0}  # no template, no budget: only what is knowable


# --------------------------------------------------------------------------- basins


def test_basins_one_hot_including_empty():
    pytest.importorskip("slmlab.evaluate.basins")
    basins = get_metric("basins")
    for g in (gen("The bread smells warm and sweet, like a slow morning. " * 2), gen("the the the the the the the the"), EMPTY):
        values = basins({}, g)
        assert set(values) == {"CREATIVE", "SEMANTIC_LOOP", "TOKEN_COLLAPSE", "UNKNOWN"}
        assert sorted(values.values()) == [0.0, 0.0, 0.0, 1.0]


# --------------------------------------------------------------------------- aggregation


def test_mean_stderr_binary_and_continuous():
    assert mean_stderr([1.0, 0.0, 1.0, 1.0]) == {"mean": 0.75, "stderr": pytest.approx(math.sqrt(0.75 * 0.25 / 4)), "n": 4}
    cont = mean_stderr([0.1, 0.2, 0.3])
    assert cont["mean"] == pytest.approx(0.2) and cont["stderr"] == pytest.approx(0.1 / math.sqrt(3))
    assert mean_stderr([0.5])["stderr"] is None and mean_stderr([])["n"] == 0
    agg = aggregate([{"m": {"a": 1.0, "b": 0.0}}, {"m": {"a": 0.0}}])
    assert agg["m"]["a"]["n"] == 2 and agg["m"]["b"]["n"] == 1


# --------------------------------------------------------------------------- suites


@pytest.mark.parametrize("name", ["logic", "tools", "markers", "roles", "basins"])
def test_every_shipped_suite_validates(name):
    assert name in list_suites()
    suite = load_suite(name)
    assert suite.name == name and suite.metrics


def test_shipped_suite_choices():
    logic = load_suite("logic")
    assert (logic.dataset.recipe, logic.dataset.split, logic.template, logic.limit) == ("pure-logic", "test", "v6", 60)
    assert logic.generation.max_new_tokens == 8 and logic.metrics == ["logic"]
    markers, basins = load_suite("markers"), load_suite("basins")
    assert markers.include and markers.dataset == basins.dataset and markers.generation == basins.generation
    assert basins.template == "chat" and basins.metrics == ["basins"]


def test_basin_corpus_is_seven_by_seven():
    records = load_records(load_suite("basins"))
    assert len(records) == 49 and len({r["id"] for r in records}) == 49 and len({r["input"] for r in records}) == 49
    cats = {}
    for r in records:
        cats[r["category"]] = cats.get(r["category"], 0) + 1
    assert cats == {c: 7 for c in ("creative_sensory", "embodied", "synesthetic", "philosophical", "introspective",
                                   "factual_simple", "factual_complex")}


def write_suite(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return path


BASE = {"name": "t", "version": 1, "dataset": {"corpus": "basins49"}, "metrics": ["logic"]}


def test_unknown_metric_lists_the_known_ones(tmp_path):
    with pytest.raises(ConfigError) as exc:
        load_suite(write_suite(tmp_path / "s.yaml", {**BASE, "metrics": ["logic", "acuracy"]}))
    msg = str(exc.value)
    assert "metrics[1]" in msg and "acuracy" in msg and all(m in msg for m in ("basins", "logic", "markers", "roles", "tools"))


def test_unknown_keys_are_named(tmp_path):
    with pytest.raises(ConfigError) as exc:
        load_suite(write_suite(tmp_path / "s.yaml", {**BASE, "metric": ["logic"]}))
    assert "metric:" in str(exc.value) and "'metrics'" in str(exc.value)
    with pytest.raises(ConfigError) as exc:
        load_suite(write_suite(tmp_path / "s.yaml", {**BASE, "generation": {"max_tokens": 4}}))
    assert "generation.max_tokens" in str(exc.value) and "max_new_tokens" in str(exc.value)


def test_bad_dataset_template_and_metric_options_fail_at_load(tmp_path):
    cases = [
        ({"dataset": {"corpus": "basins49", "recipe": "pure-logic"}}, "exactly one"),
        ({"dataset": {"corpus": "basins50"}}, "basins49"),
        ({"dataset": {"path": "missing.jsonl"}}, "no such file"),
        ({"dataset": {"corpus": "basins49", "split": "test"}}, "only apply to a recipe"),
        ({"template": "v7"}, "v6"),
        ({"metrics": [{"name": "markers", "fil": "x.yaml"}]}, "'fil'"),
        ({"metrics": [{"name": "markers", "file": "nope.yaml"}]}, "no such file"),
        ({"metrics": []}, "metrics"),
    ]
    for override, needle in cases:
        with pytest.raises(ConfigError, match=needle):
            load_suite(write_suite(tmp_path / "s.yaml", {**BASE, **override}))


def test_include_overrides_keys_and_paths_stay_relative_to_their_file(tmp_path):
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "data.jsonl").write_text('{"id": "a", "input": "P?P", "output": "●"}\n', encoding="utf-8")
    write_suite(tmp_path / "base" / "base.yaml", {
        "name": "base", "version": 1, "dataset": {"path": "data.jsonl"}, "template": "v6",
        "generation": {"max_new_tokens": 8, "temperature": 0.5}, "metrics": ["logic"],
    })
    child = load_suite(write_suite(tmp_path / "child.yaml", {
        "include": "base/base.yaml", "name": "child", "generation": {"max_new_tokens": 4}, "metrics": ["logic", "roles"],
    }))
    assert child.name == "child" and child.version == "1" and child.template == "v6"
    assert child.generation.max_new_tokens == 4 and child.generation.temperature == 0.0  # replaced wholesale
    assert child.metrics == ["logic", "roles"]
    assert load_records(child) == [{"id": "a", "input": "P?P", "output": "●"}]
    assert Path(child.include) == (tmp_path / "base" / "base.yaml").resolve()
    # a shipped suite by name works too
    assert load_suite(write_suite(tmp_path / "m.yaml", {"include": "basins", "name": "m", "metrics": ["markers"]})).template == "chat"


def test_include_cycle_is_an_error(tmp_path):
    write_suite(tmp_path / "a.yaml", {"include": "b.yaml", **BASE})
    write_suite(tmp_path / "b.yaml", {"include": "a.yaml", **BASE})
    with pytest.raises(ConfigError, match="cycle"):
        load_suite(tmp_path / "a.yaml")


def test_unknown_suite_name_lists_shipped():
    with pytest.raises(ConfigError) as exc:
        load_suite("logik")
    assert "'logic'" in str(exc.value) and "basins" in str(exc.value)


# --------------------------------------------------------------------------- running


def test_run_suite_logic_end_to_end(tmp_path):
    out = tmp_path / "res" / "logic.json"
    result = run_suite("logic", "tiny-random", limit=4, out=out)
    assert result.n == 4 and result.results_path == out and result.samples_path == samples_path_for(out)
    report = json.loads(out.read_text(encoding="utf-8"))
    assert report["suite"] == {"name": "logic", "version": "1", "source": report["suite"]["source"]}
    assert report["model"] == "tiny-random" and report["adapter"] is None
    assert report["config"]["limit"] == 4 and report["config"]["dataset"]["recipe"] == "pure-logic"
    assert report["slmlab_version"] and report["generation"]["tokens_per_second"] > 0
    assert set(report["metrics"]["logic"]) == {"accuracy", "no_glyph"}
    for stats in report["metrics"]["logic"].values():
        assert 0.0 <= stats["mean"] <= 1.0 and stats["stderr"] is not None and stats["stderr"] >= 0 and stats["n"] == 4
    lines = [json.loads(x) for x in (tmp_path / "res" / "logic.samples.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(lines) == 4
    for line in lines:
        assert line["prompt"].startswith("Q: ") and line["prompt"].endswith("\nA:")
        assert isinstance(line["generation"], str) and set(line["metrics"]["logic"]) == {"accuracy", "no_glyph"}


def make_run_dir(path: Path, model: str, adapter: bool = False) -> Path:
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(f"name: fake\nmodel: {model}\nseed: 0\ndata: {{recipe: pure-logic}}\n")
    if adapter:
        from peft import LoraConfig, get_peft_model

        from slmlab.models import load

        base, _ = load("tiny-random")
        peft_model = get_peft_model(base, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]))
        peft_model.save_pretrained(path / "adapter")
    return path


def test_adapter_for_another_model_is_refused_before_loading(tmp_path, monkeypatch):
    run = make_run_dir(tmp_path / "run", "smollm2-135m")
    import slmlab.models

    monkeypatch.setattr(slmlab.models, "load", lambda *a, **k: pytest.fail("loaded a model before checking the adapter"))
    with pytest.raises(SlmlabError) as exc:
        run_suite("logic", "tiny-random", adapter=run, limit=1)
    assert "smollm2-135m" in str(exc.value) and "tiny-random" in str(exc.value)
    # a bare PEFT adapter directory says which base it was made for
    (tmp_path / "ad").mkdir()
    (tmp_path / "ad" / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "smollm2-135m"}))
    with pytest.raises(SlmlabError, match="smollm2-135m"):
        resolve_adapter(tmp_path / "ad", "tiny-random")
    with pytest.raises(SlmlabError, match="neither"):
        resolve_adapter(tmp_path, "tiny-random")


def test_run_suite_with_a_lora_run_dir(tmp_path):
    run = make_run_dir(tmp_path / "run", "tiny-random", adapter=True)
    assert resolve_adapter(run, "tiny-random").adapter_dir == run / "adapter"
    result = run_suite("logic", "tiny-random", adapter=run, limit=2)
    assert result.adapter == str(run) and result.metrics["logic"]["no_glyph"]["n"] == 2


def test_cli_eval_prints_table(tmp_path, monkeypatch, capsys):
    from slmlab.cli import main

    out = tmp_path / "o.json"
    monkeypatch.setattr(sys, "argv", ["slmlab", "eval", "logic", "--model", "tiny-random", "--limit", "2", "-o", str(out)])
    with pytest.raises(SystemExit) as exc:
        main()
    captured = capsys.readouterr()
    assert exc.value.code in (0, None), captured.err
    assert "logic.accuracy" in captured.out and "tokens/s" in captured.out and out.is_file()
    monkeypatch.setattr(sys, "argv", ["slmlab", "eval", "logik", "-o", str(out)])
    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code == 2 and "logic" in capsys.readouterr().err
