"""Recipes: exact mixes, determinism, leakage-free splits, clear errors, validate/inspect."""

import json

import pytest

from slmlab.config import ConfigError
from slmlab.data.check import inspect_file, validate_file
from slmlab.data.logic import canonical_key
from slmlab.data.recipes import allocate, generate_dataset, list_recipes, load_recipe
from slmlab.io import write_jsonl


def test_shipped_recipes_validate_and_build(tmp_path):
    assert set(list_recipes()) >= {"v6-golden", "pure-logic", "tools-scaffolded", "trio-roles"}
    for name in list_recipes():
        res = generate_dataset(name, tmp_path / name, count=300)
        assert res.manifest["all"]["count"] == 300
        for split in ("train", "test"):
            rep = validate_file(tmp_path / name / f"{split}.jsonl")
            assert rep.ok, rep.errors[:5]


def test_v6_golden_is_60_40_and_balanced(tmp_path):
    res = generate_dataset("v6-golden", tmp_path, count=6650)
    renders = res.manifest["all"]["renders"]
    assert renders == {"hybrid": 2660, "pure": 3990}  # exact, not approximately
    train_renders = res.manifest["splits"]["train"]["renders"]
    assert abs(train_renders["pure"] / sum(train_renders.values()) - 0.6) < 0.01
    answers = res.manifest["all"]["answers"]
    assert set(answers) == {"●", "○", "◐"}
    assert all(0.28 < n / 6650 < 0.39 for n in answers.values()), answers
    pure = [r for r in res.train if r["render"] == "pure"]
    assert all(r["output"] in "●○◐" and len(r["output"]) == 1 for r in pure)


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    a = generate_dataset("trio-roles", tmp_path / "a", count=400, seed=3)
    b = generate_dataset("trio-roles", tmp_path / "b", count=400, seed=3)
    c = generate_dataset("trio-roles", tmp_path / "c", count=400, seed=4)
    for f in ("train.jsonl", "test.jsonl", "manifest.json"):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()
    assert a.manifest["content_hash"] == b.manifest["content_hash"] != c.manifest["content_hash"]


def test_splits_are_leakage_free_up_to_renaming(tmp_path):
    res = generate_dataset("v6-golden", tmp_path, count=3000)
    train_keys = {canonical_key(r["puzzle"]) for r in res.train}
    test_keys = {canonical_key(r["puzzle"]) for r in res.test}
    assert test_keys and not (train_keys & test_keys)
    assert 0.07 < len(res.test) / 3000 < 0.13
    assert res.manifest["groups"]["shared"] == 0


def test_no_exact_duplicates(tmp_path):
    res = generate_dataset("pure-logic", tmp_path, count=4000)
    pairs = [(r["input"], r["output"]) for r in res.train + res.test]
    assert len(pairs) == len(set(pairs))


def test_allocate_is_exact():
    assert allocate(6650, [0.6, 0.4]) == [3990, 2660]
    assert allocate(10, [1, 1, 1]) == [4, 3, 3]
    assert sum(allocate(997, [0.3, 0.35, 0.2, 0.15])) == 997


def _write_recipe(tmp_path, text):
    p = tmp_path / "r.yaml"
    p.write_text(text, encoding="utf-8")
    return p


def test_malformed_recipe_names_field_and_expectation(tmp_path):
    p = _write_recipe(tmp_path, "name: r\ncount: 10\ncategories:\n  - {name: a, generator: logic, weight: -1}\n  - {name: b, generator: logic}\n")
    with pytest.raises(ConfigError) as exc:
        load_recipe(p)
    msg = str(exc.value)
    assert "categories[0].weight" in msg and "greater than 0" in msg
    assert "categories[1]" in msg and "exactly one of `count` or `weight`" in msg


def test_unknown_generator_lists_known_ones(tmp_path):
    p = _write_recipe(tmp_path, "name: r\ncategories:\n  - {name: a, generator: logik, count: 5}\n")
    with pytest.raises(ConfigError, match=r"Unknown generator 'logik'\. Did you mean 'logic'\?.*jsonl.*tools"):
        load_recipe(p)


def test_unknown_family_and_template_are_named(tmp_path):
    p = _write_recipe(tmp_path, "name: r\ncategories:\n  - {name: a, generator: logic, count: 5, params: {families: [modus_ponen]}}\n")
    with pytest.raises(ConfigError, match="modus_ponens"):
        generate_dataset(p, tmp_path / "o")
    p = _write_recipe(tmp_path, "name: r\ncategories:\n  - {name: a, generator: logic, count: 5, role: creativ}\n")
    with pytest.raises(ConfigError, match=r"categories\[a\]\.role.*creative"):
        load_recipe(p)


def test_unknown_recipe_lists_shipped():
    with pytest.raises(ConfigError, match="v6-golden"):
        load_recipe("v6-golde")


def test_jsonl_generator_takes_user_files_and_names_bad_lines(tmp_path):
    write_jsonl(tmp_path / "poems.jsonl", [{"prompt": f"poem {i}", "text": f"line {i}"} for i in range(20)])
    p = _write_recipe(tmp_path, "name: r\ntest_fraction: 0.2\ncategories:\n"
                      "  - {name: poems, generator: jsonl, count: 10, params: {path: poems.jsonl, input_field: prompt, output_field: text}}\n"
                      "  - {name: logic, generator: logic, count: 10}\n")
    res = generate_dataset(p, tmp_path / "o")
    poems = [r for r in res.train + res.test if r["category"] == "poems"]
    assert len(poems) == 10 and all(r["output"].startswith("line ") for r in poems)
    (tmp_path / "poems.jsonl").write_text('{"prompt": "a", "text": "b"}\n{"prompt": "c", text}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"poems\.jsonl:2: malformed JSON"):
        generate_dataset(p, tmp_path / "o2")


def test_validate_catches_wrong_answers_and_names_lines(tmp_path):
    res = generate_dataset("v6-golden", tmp_path / "d", count=60)
    recs = res.train[:10]
    flip = {"●": "○", "○": "●", "◐": "●"}
    pure = next(i for i, r in enumerate(recs) if r["render"] == "pure")
    recs[pure] = {**recs[pure], "output": flip[recs[pure]["output"]]}
    path = tmp_path / "bad.jsonl"
    lines = [json.dumps(r, ensure_ascii=False) for r in recs]
    lines.insert(3, "{not json")
    lines.append(json.dumps({"id": "x", "input": "P→Q,P?", "output": "●", "category": "c", "family": "f"}))
    lines.append(json.dumps({"id": "y", "input": "no fields"}))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    rep = validate_file(path)
    line_of_flip = pure + 1 + (1 if pure >= 3 else 0)
    text = "\n".join(rep.errors)
    assert f"bad.jsonl:{line_of_flip}: answer" in text and "the solver gives" in text
    assert "bad.jsonl:4: malformed JSON" in text
    assert f"bad.jsonl:{len(lines) - 1}:" in text and "column" in text  # parse error with column
    assert f"bad.jsonl:{len(lines)}: missing" in text
    assert len(rep.errors) == 4  # every problem found, nothing more


def test_validate_rechecks_tool_calls(tmp_path):
    res = generate_dataset("tools-scaffolded", tmp_path / "d", count=50)
    rec = dict(res.train[0])
    rec["output"] = rec["output"].replace("{", "{\"bogus\": 1, ", 1)
    write_jsonl(tmp_path / "t.jsonl", [res.train[1], rec])
    rep = validate_file(tmp_path / "t.jsonl")
    assert rep.tools_checked == 1 and len(rep.errors) == 1 and "t.jsonl:2:" in rep.errors[0]


def test_inspect_counts_and_duplicates(tmp_path, tokenizer):
    res = generate_dataset("v6-golden", tmp_path / "d", count=200)
    recs = res.train + [res.train[0], {**res.train[1], "output": "different"}]
    write_jsonl(tmp_path / "x.jsonl", recs)
    rep = inspect_file(tmp_path / "x.jsonl", tokenizer)
    assert rep.records == len(recs) and rep.duplicate_pairs == 1 and rep.conflicting_inputs == 1
    assert rep.length_unit == "tokens" and min(rep.lengths) > 0
    assert sum(c for _, _, c in rep.histogram()) == len(recs)
    assert sum(rep.answers.values()) == len(recs)


def test_held_out_stays_held_out_across_counts_and_recipes(tmp_path):
    """A suite regenerating the test split with another count (or pure-logic vs v6-golden) never sees training shapes."""
    small = generate_dataset("v6-golden", tmp_path / "small", count=1200)
    big = generate_dataset("pure-logic", tmp_path / "big", count=4000)
    train_keys = {canonical_key(r["puzzle"]) for r in small.train}
    test_keys = {canonical_key(r["puzzle"]) for r in big.test}
    shared_pool = {canonical_key(r["puzzle"]) for r in big.train + big.test} & (train_keys | {canonical_key(r["puzzle"]) for r in small.test})
    assert shared_pool  # the two recipes really draw from the same shapes
    assert not (train_keys & test_keys)
