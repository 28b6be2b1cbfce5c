"""FastDropout: nn.Dropout's distribution from a quarter of the random draws (slmlab.train.dropout)."""

import math

import pytest
import torch
from torch import nn

from slmlab.train.dropout import FastDropout, use_fast_dropout


def test_drops_at_the_rate_and_keeps_the_expectation():
    torch.manual_seed(0)
    d = FastDropout(0.05).train()
    n = 400_003  # not a multiple of 4: the last 64-bit draw is partly used
    y = d(torch.ones(n))
    rate = (y == 0).double().mean().item()
    sd = math.sqrt(0.05 * 0.95 / n)
    assert abs(rate - 0.05) < 5 * sd
    assert abs(y.double().mean().item() - 1.0) < 5 * sd * d.scale
    assert torch.unique(y).tolist() == [0.0, pytest.approx(65536 / (65536 - 3277))]


def test_each_16_bit_lane_of_a_draw_is_unbiased():
    torch.manual_seed(1)
    y = FastDropout(0.5).train()(torch.ones(4 * 50_000))
    lanes = (y == 0).view(-1, 4).double().mean(0)  # lane k = bits 16k..16k+15 of each 64-bit draw
    sd = math.sqrt(0.25 / 50_000)
    assert torch.all((lanes - 0.5).abs() < 5 * sd), lanes


def test_same_seed_same_mask_and_the_gradient_is_the_mask():
    d = FastDropout(0.3).train()
    x = torch.randn(7, 9, requires_grad=True)
    torch.manual_seed(5)
    y1 = d(x)
    torch.manual_seed(5)
    y2 = d(x)
    assert torch.equal(y1, y2)
    y1.sum().backward()
    torch.testing.assert_close(x.grad, (y2 / x).detach(), rtol=1e-5, atol=1e-6)


def test_identity_in_eval_mode_and_at_zero_rate():
    x = torch.randn(5, 5)
    assert torch.equal(FastDropout(0.5).eval()(x), x)
    assert torch.equal(FastDropout(0.0).train()(x), x)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        FastDropout(1.0)


def test_replaces_peft_lora_dropout_and_the_saved_config_keeps_the_rate(tiny, tmp_path):
    from peft import LoraConfig, PeftModel, get_peft_model

    from slmlab.models import build_tiny_random

    model = get_peft_model(build_tiny_random(tiny[1]), LoraConfig(r=4, lora_alpha=8, lora_dropout=0.1,
                                                                target_modules="all-linear"))
    n = sum(isinstance(m, nn.Dropout) for m in model.modules())
    assert n > 0 and use_fast_dropout(model) == n
    assert not any(isinstance(m, nn.Dropout) for m in model.modules())
    model.train()
    ids = torch.tensor([[1, 2, 3, 4]])
    model(input_ids=ids).logits.sum().backward()  # trains through the new dropout
    model.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(build_tiny_random(tiny[1]), tmp_path)
    assert loaded.peft_config["default"].lora_dropout == 0.1
