"""Adapter arithmetic (slmlab.adapters) on tiny-random: PEFT's results, exact negation, checks, info, CLI.

The adapters are random LoRA weights (``init_lora_weights=False``), nothing is trained.
"""

from __future__ import annotations

import json
import math
import shutil
import typing
from pathlib import Path

import pytest
import torch

from slmlab.adapters import METHODS, info, merge, negate
from slmlab.errors import SlmlabError

IDS = torch.tensor([[1, 17, 230, 4051, 99, 7]])


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny matmuls and SVDs on a busy 2-core box: OpenMP spin-waiting makes 2 threads ~100x slower than 1."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(autouse=True, scope="module")
def shared_tokenizer(tokenizer):
    """merge/negate load tiny-random through slmlab.models.load; reading the tokenizer each time is its slow part."""
    import slmlab.models

    original = slmlab.models.load_tokenizer
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(slmlab.models, "load_tokenizer", lambda spec="smollm2-135m": tokenizer if spec == "tiny-random"
                   else original(spec))
        yield


def _base(tokenizer):
    from slmlab.models import build_tiny_random

    return build_tiny_random(tokenizer, seed=0).eval()


def _make_adapter(tokenizer, path: Path, seed: int, r: int = 4, alpha: int = 8, **kw) -> Path:
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    pm = get_peft_model(_base(tokenizer), LoraConfig(r=r, lora_alpha=alpha, init_lora_weights=False,
                                                    target_modules="all-linear", **kw))
    pm.peft_config["default"].base_model_name_or_path = "tiny-random"
    pm.save_pretrained(str(path), save_embedding_layers=False)
    return path


def _make_run(adapter: Path, run: Path, seed: int) -> Path:
    run.mkdir()
    (run / "config.yaml").write_text(f"model: tiny-random\nseed: {seed}\n")
    shutil.copytree(adapter, run / "adapter")
    return run


@pytest.fixture(scope="module")
def ad(tokenizer, tmp_path_factory) -> dict[str, Path]:
    """A, B: r=4 alpha=8 (scale 2); C: r=8; E: alpha=r (scale 1); R: rsLoRA; two runs with different seeds."""
    d = tmp_path_factory.mktemp("adapters")
    out = {"A": _make_adapter(tokenizer, d / "A", 1), "B": _make_adapter(tokenizer, d / "B", 2),
           "C": _make_adapter(tokenizer, d / "C", 3, r=8), "E": _make_adapter(tokenizer, d / "E", 4, alpha=4),
           "R": _make_adapter(tokenizer, d / "R", 5, use_rslora=True)}
    out["run3"] = _make_run(out["A"], d / "run3", 3)
    out["run4"] = _make_run(out["B"], d / "run4", 4)
    return out


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(IDS).logits


def _load(tokenizer, adapter: Path):
    from peft import PeftModel

    return PeftModel.from_pretrained(_base(tokenizer), str(adapter)).eval()


def _deltas(adapter: Path) -> dict[str, torch.Tensor]:
    """Per-module ΔW = scale·B@A computed by hand from the files."""
    from safetensors.torch import load_file

    cfg = json.loads((adapter / "adapter_config.json").read_text())
    t = load_file(str(adapter / "adapter_model.safetensors"))
    scale = cfg["lora_alpha"] / (math.sqrt(cfg["r"]) if cfg.get("use_rslora") else cfg["r"])
    return {k.removesuffix(".lora_A.weight"): scale * (t[k.replace("lora_A", "lora_B")] @ t[k])
            for k in t if k.endswith("lora_A.weight")}


def test_methods_are_peft_combination_types():
    from peft.tuners.lora.model import LoraModel

    hints = typing.get_type_hints(LoraModel.add_weighted_adapter)
    assert set(METHODS) == set(typing.get_args(hints["combination_type"]))


def test_linear_merge_equals_peft_and_loads_with_plain_peft(tokenizer, ad, tmp_path):
    from peft import PeftModel
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import load_file

    out = merge([ad["A"], ad["B"]], [1, 1], "linear", out=tmp_path / "m")
    assert sorted(p.name for p in out.iterdir()) == ["adapter_config.json", "adapter_model.safetensors", "merge.json"]
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert (cfg["base_model_name_or_path"], cfg["r"], cfg["lora_alpha"]) == ("tiny-random", 4, 4)
    rec = json.loads((out / "merge.json").read_text())
    assert rec["method"] == "linear" and rec["weights"] == [1.0, 1.0] and len(rec["inputs"]) == 2
    assert rec["versions"]["slmlab"]

    ref = PeftModel.from_pretrained(_base(tokenizer), str(ad["A"]), adapter_name="a")
    ref.load_adapter(str(ad["B"]), adapter_name="b")
    ref.add_weighted_adapter(["a", "b"], [1.0, 1.0], "ab", combination_type="linear")
    expected = get_peft_model_state_dict(ref, adapter_name="ab", save_embedding_layers=False)
    saved = load_file(str(out / "adapter_model.safetensors"))
    assert saved.keys() == expected.keys()
    assert all(torch.equal(saved[k], expected[k]) for k in saved)

    ref.set_adapter("ab")
    ref.eval()
    torch.testing.assert_close(_logits(_load(tokenizer, out)), _logits(ref), rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", ["A", "R"])
def test_negate_gives_exactly_minus_delta(ad, tmp_path, name):
    neg = negate(ad[name], tmp_path / "neg")
    orig, flipped = _deltas(ad[name]), _deltas(neg)
    assert orig.keys() == flipped.keys() and len(orig) == 14
    for k in orig:  # A·(-sqrt(s)), B·sqrt(s), scale 1: -ΔW up to float32 rounding
        torch.testing.assert_close(flipped[k], -orig[k], rtol=1e-6, atol=1e-7)
    cfg = json.loads((neg / "adapter_config.json").read_text())
    assert cfg["use_rslora"] is False and cfg["lora_alpha"] == cfg["r"] == 4  # rsLoRA: PEFT alone would scale by 2
    assert json.loads((neg / "merge.json").read_text())["operation"] == "negate"


def test_negate_is_bitwise_when_scale_is_one(ad, tmp_path):
    orig, flipped = _deltas(ad["E"]), _deltas(negate(ad["E"], tmp_path / "neg"))
    assert all(torch.equal(flipped[k], -orig[k]) for k in orig)


def test_adapter_plus_its_negation_is_the_base_model(tokenizer, ad, tmp_path):
    neg = negate(ad["A"], tmp_path / "neg")
    zero = merge([ad["A"], neg], [1, 1], "cat", out=tmp_path / "zero")
    base = _logits(_base(tokenizer))
    assert (_logits(_load(tokenizer, ad["A"])) - base).abs().max() > 1e-2  # the adapter does change the model
    torch.testing.assert_close(_logits(_load(tokenizer, zero)), base, rtol=0, atol=1e-5)
    assert json.loads((zero / "adapter_config.json").read_text())["r"] == 8  # cat: ranks add


@pytest.mark.parametrize(("method", "kw", "rank"), [
    ("ties", {"density": 0.5}, 4),
    ("dare_ties", {"density": 0.7, "majority_sign_method": "frequency"}, 4),
    ("svd", {"svd_rank": 2}, 2),
])
def test_pruning_and_svd_methods_give_loadable_adapters(tokenizer, ad, tmp_path, method, kw, rank):
    out = merge([ad["A"], ad["B"]], [1, 0.5], method, out=tmp_path / method, **kw)
    assert json.loads((out / "adapter_config.json").read_text())["r"] == rank
    assert torch.isfinite(_logits(_load(tokenizer, out))).all()
    rec = json.loads((out / "merge.json").read_text())
    assert rec["method"] == method and rec["rank"] == rank


def test_cat_merges_different_ranks_and_runs_of_one_seed(ad, tmp_path):
    out = merge([ad["A"], ad["C"], ad["run3"]], [1, -0.5, 0.25], "cat", out=tmp_path / "m")
    rec = json.loads((out / "merge.json").read_text())
    assert rec["rank"] == 16 and rec["seed"] == 3 and rec["inputs"][2]["adapter"].endswith("run3/adapter")


def _edited(src: Path, dst: Path, **changes) -> Path:
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "adapter_config.json").read_text())
    (dst / "adapter_config.json").write_text(json.dumps({**cfg, **changes}))
    return dst


@pytest.mark.parametrize(("inputs", "kw", "message"), [
    (["A", "B"], {"method": "tie"}, "Did you mean 'ties'"),
    (["A", "B"], {"method": "nope"}, "Available: cat, dare_linear"),
    (["A", "B"], {"weights": [1.0]}, "--weights has 1 value(s) for 2 adapter(s)"),
    (["A", "B"], {"method": "ties"}, "--method ties needs --density"),
    (["A", "B"], {"density": 0.5}, "--density only applies to"),
    (["A", "B"], {"method": "dare_linear", "density": 1.5}, "--density must be in (0, 1]"),
    (["A", "B"], {"svd_rank": 2}, "--svd-rank only applies to the svd methods"),
    (["A", "B"], {"method": "svd", "svd_rank": 65}, "--svd-rank 65 is larger than"),
    (["A", "rp"], {}, "has a rank_pattern (PEFT would write an adapter that does not load); use --method cat"),
    (["A", "C"], {}, "--method linear needs adapters of one rank, got ranks [4, 8]"),
    (["A"], {"method": "ties", "density": 0.5}, "needs two or more adapters"),
    (["run3", "run4"], {"method": "cat"}, "different seeds [3, 4]"),
    (["A", "other"], {}, "was trained on 'smollm2-135m', but"),
    (["A", "dora"], {}, "DoRA"),
    (["A", "layers"], {}, "differ in layers_to_transform"),
    (["A", "missing"], {}, "no such directory"),
])
def test_bad_inputs_are_clear_errors(ad, tmp_path, inputs, kw, message):
    extra = {"other": _edited(ad["B"], tmp_path / "other", base_model_name_or_path="smollm2-135m"),
             "dora": _edited(ad["B"], tmp_path / "dora", use_dora=True),
             "layers": _edited(ad["B"], tmp_path / "layers", layers_to_transform=[1]),
             "rp": _edited(ad["B"], tmp_path / "rp", rank_pattern={"q_proj": 2}),
             "missing": tmp_path / "missing"}
    paths = [{**ad, **extra}[name] for name in inputs]
    kw = {"weights": [1.0] * len(paths), **kw}
    with pytest.raises(SlmlabError) as exc:
        merge(paths, out=tmp_path / "out", **kw)
    assert message in str(exc.value)
    assert not (tmp_path / "out").exists()


def test_an_adapter_that_does_not_fit_the_model_is_a_clear_error(tokenizer, tmp_path):
    from peft import LoraConfig, get_peft_model

    from slmlab.models import build_tiny_random

    other = build_tiny_random(tokenizer, hidden_size=32, intermediate_size=64)  # claims tiny-random, is not
    pm = get_peft_model(other, LoraConfig(r=4, init_lora_weights=False, target_modules="all-linear"))
    pm.peft_config["default"].base_model_name_or_path = "tiny-random"
    pm.save_pretrained(str(tmp_path / "odd"), save_embedding_layers=False)
    with pytest.raises(SlmlabError, match="does not load onto tiny-random"):
        negate(tmp_path / "odd", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_existing_output_needs_overwrite(ad, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    negate(ad["A"], out)  # an empty directory is used as is
    (out / "keep.txt").write_text("x")
    with pytest.raises(SlmlabError, match="already exists and is not empty; pass --overwrite"):
        negate(ad["A"], out)
    negate(ad["A"], out, overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "adapter_model.safetensors").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temp dirs left behind


def test_negating_an_adapter_with_a_rank_pattern_is_refused(ad, tmp_path):
    rp = _edited(ad["B"], tmp_path / "rp", rank_pattern={"q_proj": 2})
    with pytest.raises(SlmlabError, match="has a rank_pattern"):
        negate(rp, tmp_path / "out")


def test_a_run_of_a_full_fine_tune_is_refused(ad, tmp_path):
    run = tmp_path / "run"
    (run / "model").mkdir(parents=True)
    (run / "config.yaml").write_text("model: tiny-random\n")
    with pytest.raises(SlmlabError, match="full fine-tune"):
        negate(run, tmp_path / "out")


def test_info_reports_config_and_hand_computed_norms(ad):
    from safetensors.torch import load_file

    i = info(ad["A"])
    assert (i.base_model, i.r, i.lora_alpha, i.ranks, i.use_rslora) == ("tiny-random", 4, 8.0, [4], False)
    assert "model.layers.0.self_attn.q_proj" in i.target_modules and len(i.target_modules) == 14
    t = load_file(str(ad["A"] / "adapter_model.safetensors"))
    assert i.n_params == sum(v.numel() for v in t.values())
    key = "base_model.model.model.layers.1.mlp.down_proj"
    by_hand = torch.linalg.norm(2.0 * t[f"{key}.lora_B.weight"].double() @ t[f"{key}.lora_A.weight"].double())
    got = {m.module: m for m in i.modules}["model.layers.1.mlp.down_proj"]
    assert (got.rank, got.scale) == (4, 2.0) and got.norm == pytest.approx(by_hand.item(), rel=1e-9)
    assert i.total_norm == pytest.approx(math.sqrt(sum(m.norm**2 for m in i.modules)))
    assert [m.module for m in i.modules][:2] == ["model.layers.0.mlp.down_proj", "model.layers.0.mlp.gate_proj"]
    run = info(ad["run3"])
    assert (run.seed, run.base_model, run.provenance) == (3, "tiny-random", None)


def test_cli_merge_negate_info(ad, tmp_path):
    from typer.testing import CliRunner

    from slmlab.adapters.cli import adapters_app

    runner = CliRunner()
    r = runner.invoke(adapters_app, ["merge", str(ad["A"]), str(ad["B"]), "--weights", "1,-0.5", "--method", "cat",
                                     "-o", str(tmp_path / "m")])
    assert r.exit_code == 0, r.output
    assert "rank 8" in r.output
    r = runner.invoke(adapters_app, ["negate", str(ad["A"]), "-o", str(tmp_path / "n")])
    assert r.exit_code == 0, r.output
    r = runner.invoke(adapters_app, ["info", str(tmp_path / "m"), "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert d["r"] == 8 and d["provenance"]["weights"] == [1.0, -0.5] and len(d["modules"]) == 14
    r = runner.invoke(adapters_app, ["info", str(tmp_path / "n")])
    assert r.exit_code == 0 and "model.layers.1.mlp.up_proj" in r.output and "total" in r.output
    r = runner.invoke(adapters_app, ["merge", str(ad["A"]), str(ad["B"]), "--method", "ties", "-o", str(tmp_path / "x")])
    assert isinstance(r.exception, SlmlabError) and "--density" in str(r.exception)
    for cmd in ("merge", "negate", "info"):
        assert "Example:" in runner.invoke(adapters_app, [cmd, "--help"]).output
