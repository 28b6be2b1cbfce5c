"""The classic fine-tuning bugs, each made impossible and proven here on tiny-random."""

import torch

from slmlab.train.batching import (
    IGNORE,
    Encoded,
    collate,
    encode_pair,
    encode_pairs,
    pack,
    pack_tight,
)
from slmlab.train.objectives import SupervisedLM, sft_loss

PAIRS = [
    ("Q: P→Q,P?Q\nA:", " ●<|im_end|>"),
    ("Q: ¬¬P?P\nA:", " ●<|im_end|>"),
    ("Q: P→Q,Q?P\nA:", " ◐<|im_end|>"),
    ("Q: a much longer prompt with many more tokens in it, P∧Q?P\nA:", " ●<|im_end|>"),
    ("Q: P∨Q,¬P?Q\nA:", " ● — disjunctive syllogism<|im_end|>"),
    ("Q: ∀x:P(x)→Q(x),P(a)?¬Q(a)\nA:", " ○<|im_end|>"),
    ("Q: X\nA:", " ○<|im_end|>"),
    ("Q: P↔Q,P?Q\nA:", " ●<|im_end|>"),
]


def test_only_completion_tokens_are_supervised_and_eos_is_one_of_them(tokenizer):
    examples, _ = encode_pairs(PAIRS, tokenizer, max_length=256)
    eos = tokenizer.eos_token_id
    assert tokenizer.pad_token_id == eos  # the trap: masking "pad" would also mask EOS
    for (prompt, completion), ex in zip(PAIRS, examples):
        p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        c_ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
        supervised = [t for t in ex.targets if t != IGNORE]
        assert supervised == c_ids  # exactly the completion, nothing of the prompt
        assert supervised[-1] == eos  # EOS is learned
        # targets[t] is the next token: the last prompt position predicts the first completion token
        assert ex.targets[len(p_ids) - 1] == c_ids[0]
        assert ex.targets[-1] == IGNORE


def test_truncation_cuts_the_prompt_from_the_left_and_keeps_the_completion():
    assert encode_pair(0, list(range(10, 30)), [1, 2, 3], max_length=8) == (None, "dropped")  # default: drop
    enc, what = encode_pair(0, list(range(10, 30)), [1, 2, 3], max_length=8, truncation="left")
    assert what == "prompt_truncated"
    assert enc.ids == [25, 26, 27, 28, 29, 1, 2, 3]
    assert [t for t in enc.targets if t != IGNORE] == [1, 2, 3]
    enc, what = encode_pair(0, [5, 6], [1, 2, 3, 4, 5, 6, 7, 8, 9], max_length=4, truncation="left")
    assert what == "completion_truncated" and enc.ids == [6, 1, 2, 3]
    assert encode_pair(0, [5], [], max_length=4) == (None, "dropped")


def test_packing_keeps_examples_apart_and_positions_restart(tokenizer):
    examples, _ = encode_pairs(PAIRS, tokenizer, max_length=256)
    rows = pack(examples, max_length=64)
    assert len(rows) < len(examples)  # something was actually packed
    for r in rows:
        assert len(r.ids) <= 64
        starts = [i for i, p in enumerate(r.positions) if p == 0]
        assert len(starts) == len(set(r.example_ids))
    assert sorted(i for r in rows for i in set(r.example_ids)) == list(range(len(PAIRS)))


def _loss_and_grads(model, batch):
    model.zero_grad(set_to_none=True)
    parts = sft_loss(SupervisedLM(model), batch)
    (parts.total / parts.normaliser).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return (parts.total / parts.normaliser).item(), parts.normaliser, grads


def test_packed_equals_unpacked_loss_and_gradient(tiny):
    """No example attends to another: packing changes nothing but speed."""
    model, tok = tiny
    model.train(False)  # no dropout in the tiny model anyway; make it explicit
    examples, _ = encode_pairs(PAIRS, tok, max_length=256)
    packed = collate(pack(examples, 256, packing=True), tok.pad_token_id)
    unpacked = collate(pack(examples, 256, packing=False), tok.pad_token_id)
    assert packed["input_ids"].shape[0] < unpacked["input_ids"].shape[0]
    lp, np_, gp = _loss_and_grads(model, packed)
    lu, nu, gu = _loss_and_grads(model, unpacked)
    assert np_ == nu
    assert abs(lp - lu) < 1e-5, (lp, lu)
    for name in gp:
        torch.testing.assert_close(gp[name], gu[name], atol=1e-5, rtol=1e-4)


def test_packing_really_isolates_a_perturbed_neighbour(tiny):
    """Change one example's tokens: the other examples' per-token log-probs in the same row do not move."""
    model, tok = tiny
    examples, _ = encode_pairs(PAIRS[:2], tok, max_length=256)
    batch = collate(pack(examples, 256), tok.pad_token_id)
    assert batch["input_ids"].shape[0] == 1  # both in one row
    lm = SupervisedLM(model)
    with torch.no_grad():
        before = lm(batch["input_ids"], batch["position_ids"], batch["targets"])
        changed = batch["input_ids"].clone()
        first = batch["example_ids"][0, 0].item()
        other_positions = batch["example_ids"][0] != first
        # scramble the prompt tokens of the *first-placed* example only
        own = (batch["example_ids"][0] == first) & (batch["targets"][0] == IGNORE)
        changed[0, own] = (changed[0, own] + 7) % len(tok)
        after = lm(changed, batch["position_ids"], batch["targets"])
    supervised_other = other_positions[batch["targets"][0] != IGNORE]
    assert supervised_other.any()
    torch.testing.assert_close(before[supervised_other], after[supervised_other], atol=1e-6, rtol=0)


def test_grad_accumulation_normalises_by_tokens_of_the_whole_step(tiny):
    """batch 8 × accum 1 == batch 2 × accum 4: loss summed, divided by all supervised tokens of the step."""
    model, tok = tiny
    examples, _ = encode_pairs(PAIRS, tok, max_length=256)
    full = collate(pack(examples, 256), tok.pad_token_id)
    _, n_all, g_full = _loss_and_grads(model, full)

    model.zero_grad(set_to_none=True)
    lm = SupervisedLM(model)
    for i in range(0, 8, 2):
        part = collate(pack(examples[i : i + 2], 256), tok.pad_token_id)
        (sft_loss(lm, part).total / n_all).backward()
    g_acc = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    for name in g_full:
        torch.testing.assert_close(g_acc[name], g_full[name], atol=1e-6, rtol=1e-4)

    # The 2024 bug (mean of per-micro-batch means) gives a different gradient when
    # micro-batches hold different token counts: prove the test would catch it.
    model.zero_grad(set_to_none=True)
    for i in range(0, 8, 2):
        part = collate(pack(examples[i : i + 2], 256), tok.pad_token_id)
        p = sft_loss(lm, part)
        (p.total / p.normaliser / 4).backward()
    g_bug = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    diff = max((g_bug[n] - g_full[n]).abs().max().item() for n in g_full)
    assert diff > 1e-4


def test_logits_only_at_supervised_positions_match_full_forward(tiny):
    model, tok = tiny
    examples, _ = encode_pairs(PAIRS[:3], tok, max_length=256)
    batch = collate(pack(examples, 256, packing=False), tok.pad_token_id)
    with torch.no_grad():
        ours = SupervisedLM(model)(batch["input_ids"], batch["position_ids"], batch["targets"])
        logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits
        ref = torch.log_softmax(logits.float(), -1)
        mask = batch["targets"] != IGNORE
        expected = ref[mask].gather(-1, batch["targets"][mask][:, None]).squeeze(-1)
    # Rows are padded and unpacked here, so the reference sees ordinary causal attention;
    # padding sits after each example and cannot influence it.
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)


def test_context_frozen_has_the_same_loss_but_no_gradient_through_the_context(tiny):
    from peft import LoraConfig, get_peft_model

    from slmlab.models import build_tiny_random
    from slmlab.train.batching import collate_frozen

    _, tok = tiny
    model = get_peft_model(build_tiny_random(tok, seed=0), LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    for n, p in model.named_parameters():  # nonzero B so the adapter matters
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.05, generator=torch.Generator().manual_seed(0))
    examples, _ = encode_pairs(PAIRS, tok, max_length=256)
    lm = SupervisedLM(model)
    exact = sft_loss(lm, collate(pack(examples, 256), tok.pad_token_id))
    frozen = sft_loss(lm, collate_frozen(examples, tok.pad_token_id))
    assert frozen.normaliser == exact.normaliser
    assert abs(frozen.total.item() - exact.total.item()) / exact.normaliser < 1e-5

    def grads(parts):
        model.zero_grad(set_to_none=True)
        (parts.total / parts.normaliser).backward()
        return torch.cat([p.grad.flatten() for n, p in model.named_parameters() if p.grad is not None])

    g_exact = grads(sft_loss(lm, collate(pack(examples, 256), tok.pad_token_id)))
    g_frozen = grads(sft_loss(lm, collate_frozen(examples, tok.pad_token_id)))
    assert g_exact.shape == g_frozen.shape and not torch.allclose(g_exact, g_frozen)  # documented: another gradient
    cos = torch.nn.functional.cosine_similarity(g_exact, g_frozen, dim=0).item()
    assert cos > 0.3  # ...but pointing the same general way


def _lengths(*ns: int) -> list[Encoded]:
    return [Encoded(i, [7] * n, [IGNORE] * (n - 1) + [IGNORE]) for i, n in enumerate(ns)]


def test_tight_packing_sizes_rows_to_the_real_tokens():
    # 8 short examples: rows of 64 would hold them in 4 rows (256 positions, 25% padding).
    examples = _lengths(30, 28, 26, 24, 22, 22, 20, 20)  # 192 tokens
    assert sum(len(r.ids) for r in pack(examples, 64)) == 192
    first_fit = collate(pack(examples, 64), 0)["input_ids"].numel()
    tight = collate(pack_tight(examples), 0)["input_ids"].numel()
    assert first_fit == 4 * 64 and tight == 192  # one row: no padding at all
    rows = pack_tight(examples)
    assert sorted(i for r in rows for i in set(r.example_ids)) == list(range(8))
    for r in rows:  # each example restarts its positions
        assert sum(p == 0 for p in r.positions) == len(set(r.example_ids))


def test_tight_packing_splits_long_rows_when_attention_would_dominate():
    examples = _lengths(*[500] * 8)  # 4000 tokens: one row would spend more on attention than it saves
    rows = pack_tight(examples)
    assert len(rows) > 1
    widths = {len(r.ids) for r in rows}
    assert len(widths) == 1  # balanced: nothing to pad
    assert pack_tight([]) == []


def test_tight_packing_never_cuts_an_example_and_is_deterministic():
    examples = _lengths(50, 3, 3, 3, 49, 2)
    a, b = pack_tight(examples), pack_tight(list(reversed(examples)))
    assert [r.example_ids for r in a] == [r.example_ids for r in b]
    for r in a:
        for i in set(r.example_ids):
            assert r.example_ids.count(i) == len(examples[i].ids)


def test_tight_packed_equals_unpacked_loss_and_gradient(tiny):
    model, tok = tiny
    model.train(False)
    examples, _ = encode_pairs(PAIRS, tok, max_length=256)
    loss_t, norm_t, g_t = _loss_and_grads(model, collate(pack_tight(examples), tok.pad_token_id))
    loss_u, norm_u, g_u = _loss_and_grads(model, collate(pack(examples, 256, packing=False), tok.pad_token_id))
    assert norm_t == norm_u
    assert abs(loss_t - loss_u) < 1e-5
    for name in g_u:
        torch.testing.assert_close(g_t[name], g_u[name], atol=1e-5, rtol=1e-4)
