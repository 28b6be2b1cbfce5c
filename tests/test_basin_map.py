"""Basin maps, comparison, danger-zone prediction and curation on tiny-random."""

import json

import pytest

from slmlab.errors import SlmlabError
from slmlab.evaluate.basin_map import BASINS, MapSettings, compare_maps, load_prompts, map_basins, read_map
from slmlab.evaluate.curate import curate_dataset
from slmlab.evaluate.predict import train_danger_model
from slmlab.io import read_jsonl, write_jsonl


@pytest.fixture(scope="module")
def tiny_map(tmp_path_factory, tiny):
    model, tok = tiny
    d = tmp_path_factory.mktemp("maps")
    corpus = d / "corpus.jsonl"
    write_jsonl(corpus, [{"id": str(i), "category": "ab"[i % 2], "input": f"Tell me about thing {i}"} for i in range(6)])
    out = d / "m.json"
    result = map_basins("tiny-random", corpus=str(corpus), settings=MapSettings(samples=2, max_new_tokens=12),
                        out=out, model=model, tokenizer=tok)
    return out, result


def test_map_labels_every_generation_and_sums_to_one(tiny_map):
    path, result = tiny_map
    assert result["n_generations"] == 12 and len(result["prompts"]) == 6
    assert abs(sum(result["overall"].values()) - 1) < 1e-9
    assert set(result["per_category"]) == {"a", "b"}
    assert all(s["basin"] in BASINS for p in result["prompts"] for s in p["samples"])
    assert read_map(path)["kind"] == "basin_map"


def test_compare_deltas_against_first(tiny_map, tmp_path):
    path, result = tiny_map
    other = json.loads(path.read_text())
    other["overall"] = {"CREATIVE": 1.0, "SEMANTIC_LOOP": 0.0, "TOKEN_COLLAPSE": 0.0, "UNKNOWN": 0.0}
    (tmp_path / "o.json").write_text(json.dumps(other))
    rows = compare_maps([path, tmp_path / "o.json"])
    creative = next(r for r in rows if r["scope"] == "overall" and r["basin"] == "CREATIVE")
    assert creative["deltas"][0] == 0 and abs(creative["deltas"][1] - (1 - result["overall"]["CREATIVE"])) < 1e-9


def test_not_a_map_is_refused(tmp_path):
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(SlmlabError, match="not a basin map"):
        read_map(tmp_path / "x.json")
    with pytest.raises(SlmlabError, match="basins49"):
        load_prompts("basins4")


def _fake_map(tmp_path, name, assignments):
    prompts = [{"id": str(i), "category": cat, "input": text, "samples": [{"basin": b}]} for i, (cat, text, b) in enumerate(assignments)]
    labels = [a[2] for a in assignments]
    dist = lambda ls: {b: ls.count(b) / len(ls) for b in BASINS}  # noqa: E731
    cats = sorted({a[0] for a in assignments})
    m = {"kind": "basin_map", "overall": dist(labels), "prompts": prompts,
         "per_category": {c: dist([a[2] for a in assignments if a[0] == c]) for c in cats}}
    (tmp_path / name).write_text(json.dumps(m))
    return tmp_path / name


def test_danger_model_learns_a_clear_signal_and_warns_when_small(tmp_path):
    rows = [("loopy", f"repeat the word echo forever number {i}", "SEMANTIC_LOOP") for i in range(20)]
    rows += [("story", f"write a short story about a lighthouse keeper {i}", "CREATIVE") for i in range(20)]
    dm = train_danger_model([_fake_map(tmp_path, "m.json", rows)])
    assert dm.cv_accuracy is not None and dm.cv_accuracy > 0.9 and dm.warning is None
    p = dm.predict("repeat the word echo forever")
    assert max(p, key=p.get) == "SEMANTIC_LOOP" and abs(sum(p.values()) - 1) < 1e-3
    small = train_danger_model([_fake_map(tmp_path, "s.json", rows[:3] + rows[20:23])])
    assert small.warning and "too few" in small.warning


def test_curation_reweights_by_basin_and_explains(tmp_path):
    rows = [("good", "a", "CREATIVE")] * 4 + [("loops", "b", "SEMANTIC_LOOP")] * 3 + [("loops", "c", "CREATIVE")] \
        + [("dead", "d", "TOKEN_COLLAPSE")] * 4
    m = _fake_map(tmp_path, "m.json", rows)
    data = [{"id": str(i), "input": f"x{i}", "output": "y", "category": c, "family": "f"} for i, c in
            enumerate(["good"] * 10 + ["loops"] * 10 + ["dead"] * 10 + ["other"] * 10)]
    write_jsonl(tmp_path / "d.jsonl", data)
    rep = curate_dataset(tmp_path / "d.jsonl", m, tmp_path / "out.jsonl", seed=1)
    c = rep["categories"]
    assert c["dead"]["after"] == 0 and "dropped" in c["dead"]["reason"]
    assert c["good"]["after"] == 20 and c["loops"]["after"] < 10 and c["other"]["after"] == 10
    out = read_jsonl(tmp_path / "out.jsonl")
    assert len(out) == rep["after"] and (tmp_path / "out.jsonl.curation.json").exists()
    again = curate_dataset(tmp_path / "d.jsonl", m, tmp_path / "out2.jsonl", seed=1)
    assert (tmp_path / "out.jsonl").read_bytes() == (tmp_path / "out2.jsonl").read_bytes() and again == rep
