"""slmlab.steer: corpus sets, preflight, one forward per text, diff-of-means by hand, readout files,
quality measures, steering hooks, calibration and GGUF export (all on tiny-random)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from slmlab.errors import SlmlabError
from slmlab.steer.corpus import load_corpus

SHIPPED = Path(__file__).resolve().parents[1] / "examples" / "steer"


def write_corpus(root: Path, stories: dict[str, str], paired: dict[str, dict[str, str]] | None = None) -> Path:
    (root / "stories").mkdir(parents=True, exist_ok=True)
    for name, text in stories.items():
        (root / "stories" / f"{name}.txt").write_text(text)
    for scen, files in (paired or {}).items():
        (root / "paired" / scen).mkdir(parents=True, exist_ok=True)
        for name, text in files.items():
            (root / "paired" / scen / f"{name}.txt").write_text(text)
    return root


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny matmuls on a busy 2-core box: OpenMP spin-waiting makes 2 threads ~100x slower than 1."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def small(tmp_path) -> Path:
    return write_corpus(
        tmp_path / "corpus",
        {"joy": "The sun came out and she laughed.", "fear": "A noise in the dark hall made him freeze.",
         "calm": "The lake was still and so was he."},
        {"bus": {"baseline": "The bus was late.", "joy": "The bus was late and she danced in the rain.",
                 "fear": "The bus was late and the street was very dark."},
         "desk": {"baseline": "He sat at the desk.", "calm": "He sat at the desk, breathing slowly.",
                  # same text as the story: must be run once, and stays a positive only once
                  "joy": "The sun came out and she laughed."}},
    )


@pytest.fixture
def no_model_load(monkeypatch):
    """Preflight must fail before any weights load."""
    import slmlab.models

    def boom(*a, **k):
        raise AssertionError("the model was loaded before preflight failed")

    monkeypatch.setattr(slmlab.models, "load", boom)


# --------------------------------------------------------------------------- corpus


def test_positive_and_negative_sets(small):
    c = load_corpus(small)
    assert c.concepts == ["calm", "fear", "joy"] and c.scenarios == ["bus", "desk"]
    t = {text: i for i, text in enumerate(c.texts)}
    joy = {c.texts[i] for i in c.positives("joy")}
    assert joy == {"The sun came out and she laughed.", "The bus was late and she danced in the rain."}
    neg = {c.texts[i] for i in c.negatives("joy")}
    assert neg == {"A noise in the dark hall made him freeze.", "The lake was still and so was he.",
                   "The bus was late and the street was very dark.", "He sat at the desk, breathing slowly.",
                   "The bus was late.", "He sat at the desk."}
    assert not set(c.positives("joy")) & set(c.negatives("joy"))
    assert t["The bus was late."] in c.negatives("calm") and t["The bus was late."] in c.baselines()
    assert len(c.texts) == len(c.items) - 1  # the duplicated joy text is one unit
    assert c.naive_forwards == sum(len(c.positives(x)) + len(c.negatives(x)) for x in c.concepts)


def test_corpus_hash_changes_with_content(small):
    h = load_corpus(small).sha256
    (small / "stories" / "calm.txt").write_text("The lake was still.")
    assert load_corpus(small).sha256 != h


def test_shipped_corpus_is_big_enough_and_never_names_its_concept():
    c = load_corpus(SHIPPED)
    assert len(c.concepts) >= 12 and len(c.scenarios) >= 3 and not c.warnings
    assert all(len(c.positives(x)) >= 3 for x in c.concepts)
    for it in c.items:
        if it.concept:
            assert it.concept.lower() not in c.texts[it.unit].lower().replace(",", " ").split(), it.path


# --------------------------------------------------------------------------- preflight


def test_preflight_missing_directory(tmp_path, no_model_load):
    from slmlab.steer.extract import extract

    with pytest.raises(SlmlabError, match="does not exist"):
        extract(tmp_path / "nope", "tiny-random", tmp_path / "out")


def test_preflight_no_stories_or_paired(tmp_path, no_model_load):
    from slmlab.steer.extract import extract

    (tmp_path / "c").mkdir()
    with pytest.raises(SlmlabError, match="neither stories/ nor paired/"):
        extract(tmp_path / "c", "tiny-random", tmp_path / "out")


def test_preflight_too_few_concepts(tmp_path, no_model_load):
    from slmlab.steer.extract import extract

    root = write_corpus(tmp_path / "c", {"joy": "Sun.", "fear": ""})
    with pytest.raises(SlmlabError, match="at least 2 concepts.*found 1 \\(joy\\)"):
        extract(root, "tiny-random", tmp_path / "out")


def test_preflight_scenario_without_baseline_is_named(tmp_path, no_model_load):
    from slmlab.steer.extract import extract

    root = write_corpus(tmp_path / "c", {"joy": "Sun.", "fear": "Dark."}, {"the_station": {"joy": "Trains, sun."}})
    with pytest.raises(SlmlabError, match="scenario 'the_station' has no baseline"):
        extract(root, "tiny-random", tmp_path / "out")
    (root / "paired" / "the_station" / "baseline.txt").write_text("  \n")
    with pytest.raises(SlmlabError, match="empty baseline"):
        load_corpus(root)


def test_preflight_empty_files_are_skipped_with_a_warning(tmp_path):
    root = write_corpus(tmp_path / "c", {"joy": "Sun.", "fear": "Dark.", "calm": "\n"}, {"s": {"baseline": "B.", "joy": ""}})
    c = load_corpus(root)
    assert c.concepts == ["fear", "joy"]
    assert any("stories/calm.txt" in w for w in c.warnings) and any("paired/s/joy.txt" in w for w in c.warnings)


def test_preflight_reserved_and_bad_names(tmp_path):
    root = write_corpus(tmp_path / "c", {"joy": "Sun.", "baseline": "x"})
    with pytest.raises(SlmlabError, match="reserved"):
        load_corpus(root)
    root2 = write_corpus(tmp_path / "d", {"joy": "Sun.", "bad name": "x"})
    with pytest.raises(SlmlabError, match="letters, digits"):
        load_corpus(root2)


@pytest.mark.parametrize("layers, msg", [("2", "layer 2 is out of range: the model has 2"), ("-3", "layer -3 is out of range"),
                                         ("0,x", "bad layer 'x'"), ("5:9", "out of range")])
def test_preflight_layer_out_of_range(small, tmp_path, no_model_load, layers, msg):
    from slmlab.steer.extract import extract

    with pytest.raises(SlmlabError, match=msg):
        extract(small, "tiny-random", tmp_path / "out", layers=layers)


@pytest.mark.parametrize("kw, msg", [({"pooling": "max"}, "unknown pooling"), ({"method": "lda"}, "unknown method")])
def test_preflight_bad_options(small, tmp_path, no_model_load, kw, msg):
    from slmlab.steer.extract import extract

    with pytest.raises(SlmlabError, match=msg):
        extract(small, "tiny-random", tmp_path / "out", **kw)


def test_preflight_unknown_model_spec(small, tmp_path, no_model_load):
    from slmlab.steer.extract import extract

    with pytest.raises(SlmlabError, match="Unknown model spec"):
        extract(small, "no-such-model", tmp_path / "out")


def test_parse_layers():
    from slmlab.steer.extract import parse_layers

    assert parse_layers("all", 4) == [0, 1, 2, 3]
    assert parse_layers("-1,0,0", 4) == [0, 3]
    assert parse_layers("1:3", 4) == [1, 2] and parse_layers(":2", 4) == [0, 1] and parse_layers("2:", 4) == [2, 3]


# --------------------------------------------------------------------------- extraction


def _hand_acts(model, tokenizer, texts, layer, pooling="last"):
    """Each text alone (no padding), block output captured by our own hook."""
    from slmlab.steer.extract import find_decoder_layers

    got = {}
    h = find_decoder_layers(model)[layer].register_forward_hook(lambda m, a, o: got.__setitem__("h", o[0] if isinstance(o, tuple) else o))
    rows = []
    try:
        for t in texts:
            ids = tokenizer(t, return_tensors="pt")["input_ids"]
            with torch.no_grad():
                model(input_ids=ids)
            x = got["h"][0]
            rows.append(x[-1] if pooling == "last" else x.mean(0))
    finally:
        h.remove()
    return torch.stack(rows)


@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_diff_of_means_matches_a_hand_computation(tiny, small, tmp_path, pooling):
    from slmlab.steer.extract import extract, load_readout

    model, tok = tiny
    extract(small, "tiny-random", tmp_path / "out", pooling=pooling, batch_size=3, loaded=tiny)
    ro = load_readout(tmp_path / "out")
    c = load_corpus(small)
    for layer in (0, 1):
        X = _hand_acts(model, tok, c.texts, layer, pooling)
        for k, concept in enumerate(c.concepts):
            v = X[c.positives(concept)].mean(0) - X[c.negatives(concept)].mean(0)
            torch.testing.assert_close(ro.vectors[layer][k], v / v.norm(), atol=2e-5, rtol=1e-4)
        assert torch.allclose(ro.vectors[layer].norm(dim=1), torch.ones(len(c.concepts)), atol=1e-5)


def test_each_unique_text_is_forwarded_once(tiny, small, tmp_path):
    from slmlab.steer.extract import extract

    model, _ = tiny
    rows = []
    h = model.register_forward_pre_hook(lambda m, a, kw: rows.append(kw["input_ids"].shape[0]), with_kwargs=True)
    try:
        m = extract(small, "tiny-random", tmp_path / "out", batch_size=2, loaded=tiny)
    finally:
        h.remove()
    c = load_corpus(small)
    assert sum(rows) == len(c.texts) == m["extraction"]["forwards"] == 8
    assert len(rows) == m["extraction"]["batches"] == 4
    assert c.naive_forwards == 24 > sum(rows)


def test_pca_method_gives_unit_vectors_aligned_with_diff_of_means(tiny, small, tmp_path):
    from slmlab.steer.extract import extract, load_readout

    extract(small, "tiny-random", tmp_path / "dom", loaded=tiny)
    extract(small, "tiny-random", tmp_path / "pca", method="pca", loaded=tiny)
    a, b = load_readout(tmp_path / "dom"), load_readout(tmp_path / "pca")
    assert b.manifest["method"] == "pca"
    for layer in (0, 1):
        assert torch.allclose(b.vectors[layer].norm(dim=1), torch.ones(3), atol=1e-5)
        assert ((a.vectors[layer] * b.vectors[layer]).sum(1) > 0).all()  # same side


def test_manifest_round_trip_and_other_model_refused(tiny, small, tmp_path):
    from slmlab.models import load
    from slmlab.steer.extract import load_activations, load_readout, model_fingerprint

    from slmlab.steer.extract import extract

    m = extract(small, "tiny-random", tmp_path / "out", layers="-1", loaded=tiny)
    ro = load_readout(tmp_path / "out")
    assert ro.manifest == json.loads((tmp_path / "out" / "readout.json").read_text()) == m
    assert ro.concepts == ["calm", "fear", "joy"] and ro.layers == [1] and m["hidden_size"] == 64
    assert m["relative_depths"] == {"1": 1.0} and m["pooling"] == "last" and m["method"] == "diff-of-means"
    assert m["corpus"]["sha256"] == load_corpus(small).sha256 and m["model"]["hash"] == model_fingerprint(tiny[0])
    assert m["dtype"] == "float32" and m["calibration"] == {}
    assert load_activations(tmp_path / "out")["acts"][1].shape == (8, 64)
    ro.check_model(tiny[0])  # same model: fine
    other, _ = load("tiny-random", seed=1)
    with pytest.raises(SlmlabError, match="another model") as exc:
        ro.check_model(other, "tiny-random@seed1")
    assert m["model"]["hash"][:16] in str(exc.value) and model_fingerprint(other)[:16] in str(exc.value)
    # bfloat16 copy of the same weights: same fingerprint
    assert model_fingerprint(load("tiny-random", dtype=torch.bfloat16)[0]) == m["model"]["hash"]


def test_load_readout_errors(tmp_path):
    from slmlab.steer.extract import load_readout

    with pytest.raises(SlmlabError, match="missing"):
        load_readout(tmp_path)


def test_find_decoder_layers_walks_any_wrapper(tiny):
    from slmlab.steer.extract import find_decoder_layers

    class Wrapper(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.inner = m
            self.config = m.config

    assert find_decoder_layers(Wrapper(tiny[0])) is tiny[0].model.layers


# --------------------------------------------------------------------------- quality measures


def test_ridge_r2_collinear_vs_orthogonal():
    from slmlab.steer.quality import ridge

    rng = np.random.default_rng(0)
    Q, _ = np.linalg.qr(rng.normal(size=(64, 6)))
    basis = Q.T  # 6 orthonormal rows
    v = 0.6 * basis[0] + 0.8 * basis[1]
    r2, w = ridge(v, basis[:4], 0.01)
    assert r2 > 0.999 and np.allclose(w[:2], [0.6 / 1.01, 0.8 / 1.01], atol=1e-9)
    r2_orth, w_orth = ridge(basis[5], basis[:4], 0.01)
    assert abs(r2_orth) < 1e-9 and np.allclose(w_orth, 0)


def test_first_pc_ratio_and_auroc():
    from slmlab.steer.quality import auroc, first_pc_ratio, loo_scores

    line = np.outer(np.arange(5.0), np.ones(8))
    assert first_pc_ratio(line) == pytest.approx(1.0)
    assert first_pc_ratio(np.eye(4) * 3) == pytest.approx(1 / 4, abs=1e-9) or first_pc_ratio(np.eye(4)) < 0.4
    assert auroc([3, 4], [1, 2]) == 1.0 and auroc([1], [1]) == 0.5 and auroc([0], [1, 2]) == 0.0
    rng = np.random.default_rng(1)
    X = np.concatenate([rng.normal(3, 0.1, size=(4, 8)), rng.normal(-3, 0.1, size=(6, 8))])
    ps, ns = loo_scores(X, [0, 1, 2, 3], [4, 5, 6, 7, 8, 9])
    assert auroc(ps, ns) == 1.0


def test_quality_report_on_tiny(tiny, tmp_path):
    from slmlab.steer.extract import extract
    from slmlab.steer.quality import BUCKETS, quality

    extract(SHIPPED, "tiny-random", tmp_path / "out", loaded=tiny)
    q = quality(tmp_path / "out", SHIPPED, "tiny-random", loaded=tiny)
    assert (tmp_path / "out" / "quality.json").is_file() and (tmp_path / "out" / "quality.html").is_file()
    concepts = load_corpus(SHIPPED).concepts
    assert sorted(c for b in BUCKETS for c in q["summary"][b]) == concepts
    m = q["concepts"]["calm"]["layers"]["1"]
    assert set(m) >= {"first_pc_ratio", "story_alignment", "outliers", "single_neuron", "nearest", "ridge", "auroc", "heads", "triage"}
    assert len(m["nearest"]) == 5 and len(m["ridge"]["top"]) == 5 and len(m["outliers"]) == 2
    assert 0 <= m["single_neuron"]["cosine"] <= 1 and 0 <= m["auroc"] <= 1
    assert m["heads"]["uniform_concentration"] == 0.75 and len(m["heads"]["top_heads"]) == 4
    # a different corpus is refused
    other = write_corpus(tmp_path / "c2", {"a": "x y", "b": "z w"})
    with pytest.raises(SlmlabError, match="not the corpus"):
        quality(tmp_path / "out", other, "tiny-random", loaded=tiny)


# --------------------------------------------------------------------------- steering and readout


def _hooks(model):
    from slmlab.steer.extract import find_decoder_layers

    return sum(len(b._forward_hooks) for b in find_decoder_layers(model))


def test_steering_moves_logits_toward_lm_head_v(tiny):
    from slmlab.steer.apply import steering

    model, tok = tiny
    ids = tok("The weather today is", return_tensors="pt")["input_ids"]
    v = torch.randn(64, generator=torch.Generator().manual_seed(3))
    v = v / v.norm()
    target = model.lm_head.weight @ (model.model.norm.weight * v)  # lm_head . v through the final norm's gain

    def proj(alpha):
        with torch.no_grad(), steering(model, {-1: v}, alpha):
            return float(model(input_ids=ids).logits[0, -1] @ target)

    lo, mid, hi = proj(-2.0), proj(0.0), proj(2.0)
    assert lo < mid < hi
    assert _hooks(model) == 0


def test_steering_adds_exactly_alpha_v_to_the_readout(tiny, small, tmp_path):
    from slmlab.steer.apply import steering, token_scores
    from slmlab.steer.extract import extract, load_readout

    model, tok = tiny
    extract(small, "tiny-random", tmp_path / "out", loaded=tiny)
    ro = load_readout(tmp_path / "out")
    ids = tok("A quiet morning by the lake")["input_ids"]
    V = ro.vectors[0]
    base = token_scores(model, ids, 0, {0: V})[0]
    with steering(model, {0: V[0]}, 0.5):
        all_pos = token_scores(model, ids, 0, {0: V})[0]
    with steering(model, {0: V[0]}, 0.5, positions="new"):
        new_pos = token_scores(model, ids, 0, {0: V})[0]
    np.testing.assert_allclose(all_pos[:, 0] - base[:, 0], 0.5, atol=1e-5)
    np.testing.assert_allclose(all_pos[:, 1:] - base[:, 1:], np.broadcast_to(0.5 * (V[1:] @ V[0]).numpy(), base[:, 1:].shape), atol=1e-5)
    np.testing.assert_allclose(new_pos[:-1], base[:-1], atol=1e-6)  # prompt positions untouched
    assert new_pos[-1, 0] - base[-1, 0] == pytest.approx(0.5, abs=1e-5)


def test_steering_hooks_removed_after_an_exception_and_unknown_layer_refused(tiny):
    from slmlab.steer.apply import steering

    model, _ = tiny
    v = torch.ones(64)
    with pytest.raises(RuntimeError, match="inside"):
        with steering(model, {0: v, 1: v}, 1.0):
            assert _hooks(model) == 2
            raise RuntimeError("inside")
    assert _hooks(model) == 0
    with pytest.raises(SlmlabError, match="layer 7 is out of range"):
        with steering(model, {7: v}, 1.0):
            pass
    with pytest.raises(SlmlabError, match="hidden size is 64"):
        with steering(model, {0: torch.ones(3)}, 1.0):
            pass
    with pytest.raises(SlmlabError, match="unknown positions"):
        with steering(model, {0: v}, 1.0, positions="prompt"):
            pass
    assert _hooks(model) == 0


def test_readout_and_steered_generation(tiny, small, tmp_path):
    from slmlab.evaluate.generate import generate
    from slmlab.steer.apply import readout, steering
    from slmlab.steer.extract import extract, load_readout

    model, tok = tiny
    extract(small, "tiny-random", tmp_path / "out", loaded=tiny)
    r = readout(model, tok, "Hello there", tmp_path / "out", max_new_tokens=5)
    assert r.concepts == ["calm", "fear", "joy"] and set(r.scores) == {0, 1}
    assert r.scores[1].shape == (len(r.tokens), 3) and len(r.token_strings) == len(r.tokens)
    v = load_readout(tmp_path / "out").vector("joy", 1)
    with steering(model, {1: v}, 5.0, positions="new"):  # the cached decode path
        g = generate(model, tok, ["Hello there"], max_new_tokens=4)
    assert g.new_tokens >= 1 and _hooks(model) == 0


# --------------------------------------------------------------------------- calibrate, export, CLI


def test_triage_rules():
    from slmlab.steer.quality import triage

    def m(auroc=0.95, r2=0.2, pc1=0.8, judged=True):
        return {"auroc": auroc, "ridge": {"r2": r2}, "first_pc_ratio": pc1, "first_pc_judged": judged}

    assert triage(m()) == "clean"
    assert triage(m(judged=False)) == "ok"  # too few positives to judge the first-PC ratio
    assert triage(m(pc1=0.3)) == "fragmented" and triage(m(pc1=0.5)) == "ok"
    assert triage(m(r2=0.95)) == "redundant" and triage(m(auroc=0.6, r2=0.95)) == "weak"


def test_safe_alpha_rule():
    from slmlab.steer.calibrate import safe_alpha

    assert safe_alpha([0, 1, 2, 4], [0, 0, 1, 0]) == 1  # stops at the first worse-than-baseline alpha
    assert safe_alpha([0, 1, 2], [1, 1, 1]) == 2  # baseline already degenerate on one prompt
    assert safe_alpha([0, 1], [0, 2]) == 0


def test_calibrate_writes_back_into_readout_json(tiny, small, tmp_path):
    from slmlab.steer.calibrate import calibrate
    from slmlab.steer.extract import extract, load_readout

    extract(small, "tiny-random", tmp_path / "out", loaded=tiny)
    r = calibrate(tmp_path / "out", "joy", "tiny-random", layer=-1, alphas=[0.5, 2.0], prompts=["Hi", "Tell me a story"],
                  max_new_tokens=4, refine=0, loaded=tiny)
    cal = load_readout(tmp_path / "out").manifest["calibration"]["joy"]
    assert cal == json.loads(json.dumps(r))
    assert cal["tested_range"] == [0.0, 2.0] and cal["alphas"] == [0.0, 0.5, 2.0] and cal["layer"] == 1
    assert cal["safe_alpha"] in cal["alphas"] and set(cal["readout_by_alpha"]) == {"0", "0.5", "2"}
    assert (tmp_path / "out" / "calibration" / "joy.json").is_file()
    with pytest.raises(SlmlabError, match="Unknown concept 'joyy'. Did you mean 'joy'"):
        calibrate(tmp_path / "out", "joyy", "tiny-random", loaded=tiny)
    with pytest.raises(SlmlabError, match=">= 0"):
        calibrate(tmp_path / "out", "joy", "tiny-random", alphas=[-1.0], loaded=tiny)


def test_export_gguf_round_trip(tiny, small, tmp_path):
    import gguf

    from slmlab.steer.apply import export_gguf
    from slmlab.steer.extract import extract, load_readout

    extract(small, "tiny-random", tmp_path / "out", loaded=tiny)
    r = export_gguf(tmp_path / "out", "fear", tmp_path / "fear.gguf", scale=2.0)
    assert r["layers"] == [1] and r["skipped"] == [0]
    rd = gguf.GGUFReader(str(tmp_path / "fear.gguf"))
    field = lambda k: rd.get_field(k).parts[-1]  # noqa: E731
    assert bytes(field("general.architecture")).decode() == "controlvector"
    assert bytes(field("controlvector.model_hint")).decode() == "llama"
    assert int(field("controlvector.layer_count")[0]) == 1
    (t,) = rd.tensors
    assert t.name == "direction.1"
    np.testing.assert_allclose(np.asarray(t.data), 2.0 * load_readout(tmp_path / "out").vector("fear", 1).numpy(), rtol=1e-6)
    with pytest.raises(SlmlabError, match="layer 0"):
        export_gguf(tmp_path / "out", "fear", tmp_path / "x.gguf", layers=[0])


def test_cli_help_has_examples_and_errors_are_slmlab_errors(small, tmp_path, no_model_load):
    import typer
    from typer.testing import CliRunner

    from slmlab.steer.cli import steer_app

    app = typer.Typer()
    app.add_typer(steer_app, name="steer")
    runner = CliRunner()
    for cmd in ("extract", "quality", "calibrate", "export-gguf"):
        res = runner.invoke(app, ["steer", cmd, "--help"], terminal_width=200)
        assert res.exit_code == 0 and "Example" in res.output and "slmlab steer" in res.output, res.output
    res = runner.invoke(app, ["steer", "extract", str(small), "-m", "tiny-random", "--layers", "9", "-o", str(tmp_path / "o")])
    assert isinstance(res.exception, SlmlabError) and "out of range" in str(res.exception)
