"""Batched decoding (slmlab.serve.decode): a row in a batch is decoded exactly as it would be alone."""

from __future__ import annotations

import pytest
import torch

from slmlab.serve.decode import Row, Sampling, choose, decode, held_back, left_pad, stop_cut

PROMPTS = ["Hello there", "The quick brown fox jumps over", "a", "One two three four five six seven eight nine"]


@pytest.fixture(scope="module")
def model_tok():
    from slmlab.models import load

    return load("tiny-random", seed=3)


def ids_of(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def run(model, tok, rows, mixed=False):
    return decode(model, tok, rows, eos_ids={tok.eos_token_id}, pad_id=tok.pad_token_id, mixed_adapters=mixed)


def test_left_pad_positions_count_real_tokens():
    ids, mask, pos = left_pad([[5, 6, 7], [9]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 9]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert pos.tolist() == [[0, 1, 2], [0, 0, 0]]


def test_batched_greedy_equals_alone_tokens_and_logprobs(model_tok):
    model, tok = model_tok
    s = Sampling(max_tokens=12, echo=True, logprobs=3)
    alone = [run(model, tok, [Row(ids_of(tok, p), s)])[0] for p in PROMPTS]
    batch = run(model, tok, [Row(ids_of(tok, p), s) for p in PROMPTS])
    for a, b in zip(alone, batch):
        assert a.token_ids == b.token_ids
        assert a.text == b.text
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-5)
        assert a.prompt_logprobs[0] is None and b.prompt_logprobs[0] is None
        assert a.prompt_logprobs[1:] == pytest.approx(b.prompt_logprobs[1:], abs=1e-5)
        assert list(a.top_logprobs[0]) == list(b.top_logprobs[0])


def test_prompt_logprobs_match_a_plain_forward(model_tok):
    model, tok = model_tok
    ids = ids_of(tok, PROMPTS[3])
    (res,) = run(model, tok, [Row(ids, Sampling(max_tokens=0, echo=True))])
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].log_softmax(-1)
    expected = [logits[i, ids[i + 1]].item() for i in range(len(ids) - 1)]
    assert res.prompt_logprobs[0] is None
    assert res.prompt_logprobs[1:] == pytest.approx(expected, abs=1e-5)
    assert res.token_ids == []  # max_tokens 0: scoring only


def test_greedy_tokens_are_the_argmax_of_their_step(model_tok):
    model, tok = model_tok
    (res,) = run(model, tok, [Row(ids_of(tok, PROMPTS[0]), Sampling(max_tokens=6, logprobs=1))])
    for tid, lp, top in zip(res.token_ids, res.logprobs, res.top_logprobs):
        assert list(top) == [tid] and top[tid] == pytest.approx(lp)


def test_seeded_sampling_is_independent_of_the_batch(model_tok):
    model, tok = model_tok
    s = Sampling(max_tokens=10, temperature=1.0, top_p=0.9, seed=7)
    alone = run(model, tok, [Row(ids_of(tok, PROMPTS[1]), s)])[0]
    others = [Row(ids_of(tok, p), Sampling(max_tokens=10, temperature=0.7, seed=i)) for i, p in enumerate(PROMPTS)]
    mixed = run(model, tok, others[:2] + [Row(ids_of(tok, PROMPTS[1]), s)] + others[2:])[2]
    assert alone.token_ids == mixed.token_ids
    other_seed = run(model, tok, [Row(ids_of(tok, PROMPTS[1]), Sampling(max_tokens=10, temperature=1.0, seed=8))])[0]
    assert other_seed.token_ids != alone.token_ids


def test_choices_of_one_request_differ(model_tok):
    model, tok = model_tok
    rows = [Row(ids_of(tok, PROMPTS[0]), Sampling(max_tokens=10, temperature=1.0, seed=1, choice=j)) for j in range(3)]
    texts = {r.text for r in run(model, tok, rows)}
    assert len(texts) > 1


def test_nucleus_keeps_the_smallest_set_reaching_top_p():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    g = torch.Generator().manual_seed(0)
    draws = {choose(logits, Sampling(temperature=1.0, top_p=0.6), g) for _ in range(300)}
    assert draws == {0, 1}  # 0.5 alone is below 0.6; 0.5 + 0.3 reaches it
    assert choose(logits, Sampling(temperature=0.0), None) == 0


def test_stop_string_cuts_text_and_is_never_streamed(model_tok):
    model, tok = model_tok
    (free,) = run(model, tok, [Row(ids_of(tok, PROMPTS[1]), Sampling(max_tokens=12))])
    word = free.text.split()[1]  # a word the model will produce
    pieces: list[str] = []
    row = Row(ids_of(tok, PROMPTS[1]), Sampling(max_tokens=12, stop=[word]), on_text=pieces.append)
    (res,) = run(model, tok, [row])
    assert res.finish_reason == "stop"
    assert word not in res.text and free.text.startswith(res.text)
    assert "".join(pieces) == res.text


def test_max_tokens_and_length_finish(model_tok):
    model, tok = model_tok
    (res,) = run(model, tok, [Row(ids_of(tok, PROMPTS[2]), Sampling(max_tokens=5, ignore_eos=True))])
    assert len(res.token_ids) == 5 and res.finish_reason == "length"


def test_eos_ends_a_row_with_stop(model_tok):
    model, tok = model_tok
    prompt = ids_of(tok, PROMPTS[0])
    (free,) = run(model, tok, [Row(prompt, Sampling(max_tokens=1, ignore_eos=True))])
    first = free.token_ids[0]
    rows = [Row(prompt, Sampling(max_tokens=8))]
    res = decode(model, tok, rows, eos_ids={first}, pad_id=tok.pad_token_id, mixed_adapters=False)[0]
    assert res.finish_reason == "stop" and res.text == ""
    assert res.token_ids == [first] and len(res.logprobs) == 1  # the EOS is kept with its log-prob, not in the text


def test_helpers_for_stop_strings():
    assert stop_cut("abc STOP def", ["STOP"]) == 4
    assert stop_cut("abc", ["x", ""]) is None
    assert held_back("hello ST", ["STOP"]) == 2
    assert held_back("hello", ["STOP"]) == 0
    assert held_back("caf\ufffd", []) == 1


def test_mixed_adapters_in_one_batch_equal_each_alone():
    from peft import LoraConfig, get_peft_model

    from slmlab.models import load

    model, tok = load("tiny-random", seed=3)
    torch.manual_seed(0)
    cfg = LoraConfig(r=4, lora_alpha=16, target_modules="all-linear", init_lora_weights=False)
    pm = get_peft_model(model, cfg, adapter_name="one")
    pm.add_adapter("two", cfg)
    with torch.no_grad():  # make "two" differ from "one"
        for n, p in pm.named_parameters():
            if ".two." in n:
                p.mul_(-3.0)
    pm.eval()
    prompt = ids_of(tok, PROMPTS[3])
    s = Sampling(max_tokens=8, echo=True)
    mixed = run(pm, tok, [Row(prompt, s, "one"), Row(prompt, s, None), Row(prompt, s, "two")], mixed=True)
    alone = [run(pm, tok, [Row(prompt, s, name)], mixed=True)[0] for name in ("one", None, "two")]
    with pm.disable_adapter():
        base = run(pm, tok, [Row(prompt, s)])[0]
    for m, a in zip(mixed, alone):
        assert m.token_ids == a.token_ids
        assert m.prompt_logprobs[1:] == pytest.approx(a.prompt_logprobs[1:], abs=1e-5)
    assert mixed[1].prompt_logprobs[1:] == pytest.approx(base.prompt_logprobs[1:], abs=1e-5)
    assert mixed[0].prompt_logprobs[1:] != pytest.approx(mixed[2].prompt_logprobs[1:], abs=1e-3)
