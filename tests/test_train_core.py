"""The public step API: TrainState round-trips bit-exactly; train_step on raw token ids is run()'s step."""

from __future__ import annotations

import io

import pytest
import torch

from slmlab.train.batching import first_supervised
from slmlab.train.objectives.dpo import DPO
from slmlab.train.objectives.sft import SFT
from slmlab.train.state import TrainState, new_state
from slmlab.train.step import StepBatch, forward_backward, optimizer_step, skip_step, train_step

# Two examples per "prompt": context ids, continuation ids (the server's /train shape).
CONTEXTS = [[5, 17, 29, 3], [7, 7, 12], [40, 41, 42, 43, 44], [9, 8], [100, 101, 102], [60, 61]]
CONTINUATIONS = [[11, 2], [13, 14, 2], [2], [21, 22, 23, 2], [31, 2], [50, 51, 2]]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """A 64-wide model runs faster on one thread, and the machine is shared."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _tiny_lora(seed: int = 0, dropout: float = 0.1, r: int = 4):
    """The same frozen base every time; ``seed`` draws the adapter's initialisation."""
    from peft import LoraConfig, get_peft_model

    from slmlab.models import load

    model, _ = load("tiny-random", seed=0)
    torch.manual_seed(seed)
    model = get_peft_model(model, LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=dropout, target_modules="all-linear"))
    model.train()
    return model


def _tiny_full(seed: int = 0):
    from slmlab.models import load

    model, _ = load("tiny-random", seed=seed)
    for p in model.parameters():
        p.requires_grad_(True)
    model.train()
    return model


def _batch(i: int) -> StepBatch:
    k = i % 3
    return StepBatch.from_token_ids(CONTEXTS[k:k + 3], CONTINUATIONS[k:k + 3], micro_batch_size=2)


def _train(state: TrainState, steps: range) -> list[float]:
    return [train_step(state, _batch(i), SFT()).loss for i in steps]


def _weights(state: TrainState) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in state.model.state_dict().items()}


@pytest.mark.parametrize("optimizer,build", [("adamw", _tiny_lora), ("apollo-mini", _tiny_lora), ("apollo", _tiny_lora),
                                             ("adamw", _tiny_full)])
def test_train_state_round_trips_bit_exactly(optimizer, build):
    kwargs = {"rank": 2} if optimizer == "apollo" else {}
    state = new_state(build(), optimizer=optimizer, lr=1e-2, schedule="cosine", total_steps=8, optimizer_kwargs=kwargs)
    _train(state, range(3))
    buf = io.BytesIO()
    torch.save(state.state_dict(), buf)  # a snapshot survives serialisation, optimizer moments included
    straight = _train(state, range(3, 7))
    after_straight = _weights(state)

    # Restore into another initialisation (adapter, or every weight) and a fresh optimizer:
    # everything that differs must come from the state.
    other = new_state(build(seed=1), optimizer=optimizer, lr=1e-2, schedule="cosine", total_steps=8, optimizer_kwargs=kwargs)
    buf.seek(0)
    other.load_state_dict(torch.load(buf, weights_only=False))
    assert other.step == 3 and other.tokens_seen == state.tokens_seen - sum(_batch(i).tokens for i in range(3, 7))
    again = _train(other, range(3, 7))
    assert again == straight  # bit-identical losses, dropout included (the RNG is part of the state)
    for k, v in _weights(other).items():
        assert torch.equal(v, after_straight[k]), k
    assert other.step == state.step == 7 and other.lr == state.lr


def test_state_dict_is_a_snapshot_not_a_view():
    state = new_state(_tiny_lora(), lr=1e-2)
    snap = state.state_dict()
    moments_before = {k: v["exp_avg"].clone() for k, v in snap["optimizer"]["state"].items()} if snap["optimizer"]["state"] else {}
    _train(state, range(2))
    assert snap["step"] == 0 and state.step == 2
    assert all(torch.equal(v, snap["optimizer"]["state"][k]["exp_avg"]) for k, v in moments_before.items())
    assert not all(torch.equal(v, state.weights()[k]) for k, v in snap["weights"].items())


def test_raw_token_ids_need_no_tokenizer_and_supervise_only_the_continuation():
    batch = StepBatch.from_token_ids([[5, 6, 7]], [[8, 2]])
    (mb,) = batch.micro_batches
    assert mb["input_ids"].tolist() == [[5, 6, 7, 8, 2]]
    assert mb["targets"].tolist() == [[-100, -100, 8, 2, -100]]  # EOS (2) is learned; the context is not
    assert batch.normaliser == 2
    with pytest.raises(ValueError, match="example 0: nothing to train on"):
        StepBatch.from_token_ids([[]], [[8]])
    with pytest.raises(ValueError, match="2 contexts but 1 continuations"):
        StepBatch.from_token_ids([[1], [2]], [[3]])


def test_accumulation_over_micro_batches_equals_one_batch():
    whole = new_state(_tiny_lora(dropout=0.0), lr=1e-2)
    split = new_state(_tiny_lora(dropout=0.0), lr=1e-2)
    # Train one step so that LoRA's B is nonzero and every adapter weight gets a gradient.
    for state in (whole, split):
        train_step(state, _batch(0), SFT())
    a = forward_backward(whole, StepBatch.from_token_ids(CONTEXTS, CONTINUATIONS), SFT())
    b = forward_backward(split, StepBatch.from_token_ids(CONTEXTS, CONTINUATIONS, micro_batch_size=1), SFT())
    assert abs(a.loss - b.loss) < 1e-6 and abs(a.grad_norm - b.grad_norm) < 1e-6
    for p, q in zip(whole.trainable, split.trainable):
        assert torch.allclose(p.grad, q.grad, rtol=1e-3, atol=1e-6)


def test_forward_backward_then_skip_leaves_the_weights_and_advances_the_schedule():
    state = new_state(_tiny_lora(), lr=1e-2, schedule="linear", total_steps=4)
    before = state.weights()
    result = forward_backward(state, _batch(0), SFT())
    assert result.grad_norm > 0 and not result.applied
    skipped = skip_step(state, result)
    assert state.step == 1 and skipped.lr == 1e-2 and state.lr == pytest.approx(7.5e-3)
    assert all(torch.equal(v, state.weights()[k]) for k, v in before.items())
    assert all(p.grad is None for p in state.trainable)
    applied = optimizer_step(state, forward_backward(state, _batch(1), SFT()))
    assert applied.applied and applied.lr == pytest.approx(7.5e-3) and state.step == 2


def test_a_preference_step_on_raw_ids_pairs_chosen_and_rejected():
    state = new_state(_tiny_lora(dropout=0.0), lr=1e-2)
    # pair 0: chosen = [11, 2], rejected = [13, 2]; pair 1 likewise, same contexts.
    batch = StepBatch.from_token_ids([[5, 6], [5, 6], [7, 8], [7, 8]], [[11, 2], [13, 2], [21, 2], [22, 2]], DPO())
    assert batch.normaliser == 2  # pairs, not tokens
    result = train_step(state, batch, DPO())
    assert result.loss == pytest.approx(-torch.nn.functional.logsigmoid(torch.tensor(0.0)).item(), abs=1e-6)


def test_train_step_on_raw_token_ids_equals_the_step_through_run(tmp_path):
    """One step of `run()` on tokenized records == `train_step` on the same ids with no tokenizer."""
    import random

    from slmlab.io import write_jsonl
    from slmlab.train.config import load_train_config
    from slmlab.train.data import DataPlan, prepare_data, units
    from slmlab.train.loop import build_model, run
    from slmlab.models import load_tokenizer
    from peft import get_peft_model_state_dict
    from safetensors.torch import load_file

    records = [{"id": str(i), "input": f"P{i}→Q{i},P{i}?Q{i}", "output": "●" if i % 3 else "◐ — no",
                "category": "t", "family": "f"} for i in range(24)]
    write_jsonl(tmp_path / "train.jsonl", records)
    config = load_train_config(data={
        "name": "one", "model": "tiny-random", "output_dir": str(tmp_path / "runs"), "seed": 3,
        "adapter": {"kind": "lora", "r": 4, "alpha": 8, "dropout": 0.1},
        "data": {"train": str(tmp_path / "train.jsonl"), "max_length": 64, "packing": False},
        "optimizer": {"name": "adamw", "lr": 1e-2}, "batch_size": 4, "grad_accum": 2, "max_steps": 1,
        "save_every": None, "watch": {"enabled": False, "dashboard": False}})
    through_run = run(config)

    # The same step by hand: the plan's examples as (context ids, continuation ids), no tokenizer after this.
    data = prepare_data(config, tmp_path / "scratch", load_tokenizer(config.model), SFT())
    micro = DataPlan(units(data.train, 1), 4, 2, 1, config.seed).step_micro_batches(0)
    examples = [u[0] for mb in micro for u in mb]
    ctx = [e.ids[:first_supervised(e) + 1] for e in examples]
    cont = [e.ids[first_supervised(e) + 1:] for e in examples]
    torch.manual_seed(config.seed)
    random.seed(config.seed)
    model, _ = build_model(config)
    state = new_state(model, lr=1e-2, schedule="cosine", total_steps=1)
    result = train_step(state, StepBatch.from_token_ids(ctx, cont, micro_batch_size=4, max_length=64, packing=False), SFT())

    assert result.loss == through_run.losses[0]
    saved = load_file(str(through_run.run_dir / "adapter" / "adapter_model.safetensors"))
    mine = get_peft_model_state_dict(state.model)
    assert saved.keys() == mine.keys() and all(torch.equal(saved[k], mine[k]) for k in saved)
