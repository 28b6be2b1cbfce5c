"""Datasets as users have them: TRL's shapes and slmlab's records, from JSONL, JSON, Parquet, CSV or save_to_disk.

Every shape × file type is detected and encoded identically; the conversational mask is checked
token by token on SmolLM2's tokenizer; the chat-template pitfalls (prefix property, double BOS,
generation prompt) are tested; malformed files give one clear error; a TRL prompt/completion
dataset trains to the same losses from JSONL, Parquet and a save_to_disk directory.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from slmlab.data.shapes import SHAPES, DatasetError, detect_shape, read_dataset
from slmlab.errors import SlmlabError
from slmlab.io import write_jsonl
from slmlab.train.batching import IGNORE
from slmlab.train.config import load_train_config
from slmlab.train.data import (
    TrainingError,
    check_objective,
    conversation_tokens,
    encode_masked,
    encode_records,
    prepare_data,
)
from slmlab.train.objectives.dpo import DPO
from slmlab.train.objectives.sft import SFT


def _msgs(*pairs):
    return [{"role": r, "content": c} for r, c in pairs]


EXAMPLES: dict[str, list[dict]] = {
    "slmlab": [{"input": "P→Q,P?Q", "output": "●", "category": "t"}, {"input": "A→B,B?A", "output": "◐"}],
    "prompt-completion": [{"prompt": "2+2=", "completion": " 4"}, {"prompt": "3+3=", "completion": " 6"}],
    "prompt-completion (conversational)": [
        {"prompt": _msgs(("user", "2+2?")), "completion": _msgs(("assistant", "4"))},
        {"prompt": _msgs(("system", "Be brief."), ("user", "3+3?")), "completion": _msgs(("assistant", "6"))},
    ],
    "conversational": [
        {"messages": _msgs(("user", "hi"), ("assistant", "hello"))},
        {"messages": _msgs(("system", "Be brief."), ("user", "2+2?"), ("assistant", "4"), ("user", "and 3+3?"),
                           ("assistant", "6"))},
    ],
    "preference (text)": [{"prompt": "2+2=", "chosen": "4", "rejected": "5"},
                          {"prompt": "3+3=", "chosen": "6", "rejected": "7"}],
    "preference (conversational)": [
        {"prompt": _msgs(("user", "2+2?")), "chosen": _msgs(("assistant", "4")), "rejected": _msgs(("assistant", "5"))},
        {"prompt": _msgs(("user", "3+3?")), "chosen": _msgs(("assistant", "6")), "rejected": _msgs(("assistant", "7"))},
    ],
    "language-modelling": [{"text": "Two and two make four."}, {"text": "Three and three make six."}],
}
TEXT_SHAPES = {"slmlab", "prompt-completion", "preference (text)", "language-modelling"}


def write(path: Path, records: list[dict]) -> Path:
    """``records`` as a JSONL, JSON, Parquet or CSV file, or a save_to_disk directory, by ``path``'s suffix."""
    import datasets
    import pandas as pd

    kind = path.suffix or "dir"
    if kind == ".jsonl":
        write_jsonl(path, records)
    elif kind == ".json":
        path.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    elif kind == ".parquet":
        pd.DataFrame(records).to_parquet(path)
    elif kind == ".csv":
        pd.DataFrame(records).to_csv(path, index=False)
    else:
        datasets.Dataset.from_list(records).save_to_disk(str(path))
    return path


FILE_KINDS = [".jsonl", ".json", ".parquet", ".csv", ""]


def _objective(shape: str):
    return DPO() if SHAPES[shape].unit_size == 2 else SFT()


# CSV cells are text: conversations do not fit in them.
CASES = [(shape, kind) for shape in EXAMPLES for kind in FILE_KINDS if kind != ".csv" or shape in TEXT_SHAPES]


@pytest.mark.parametrize(("shape", "kind"), CASES, ids=[f"{s}-{k.lstrip('.') or 'save_to_disk'}" for s, k in CASES])
def test_every_shape_from_every_file_type_is_detected_and_encoded_alike(tmp_path, tokenizer, shape, kind):
    records = EXAMPLES[shape]
    path = write(tmp_path / f"data{kind}", records)
    got, detected = read_dataset(path)
    assert detected == shape
    assert got == records  # the None that columnar formats add for missing fields is gone
    encoded, stats = encode_records(got, shape, _objective(shape), "v6", tokenizer, 128)
    reference, _ = encode_records(records, shape, _objective(shape), "v6", tokenizer, 128)
    assert encoded == reference and stats.total == len(encoded) == len(records) * SHAPES[shape].unit_size
    assert stats.dropped == stats.refused == 0
    assert all(e.n_supervised > 0 and e.targets[-1] == IGNORE for e in encoded)
    if SHAPES[shape].unit_size == 2:
        assert [e.index for e in encoded] == [0, 1, 2, 3]  # pair k = examples 2k (chosen), 2k+1 (rejected)


def _expected(tokenizer, segments):
    """ids and pre-shifted targets from (text, learned) segments, each tokenized on its own."""
    ids, learned = [], []
    for text, on in segments:
        part = tokenizer(text, add_special_tokens=False)["input_ids"]
        ids += part
        learned += [on] * len(part)
    return ids, [ids[t + 1] if learned[t + 1] else IGNORE for t in range(len(ids) - 1)] + [IGNORE]


def test_conversation_mask_is_assistant_turns_with_their_end_token_checked_token_by_token(tokenizer):
    messages = EXAMPLES["conversational"][1]["messages"]
    (enc,), _ = encode_records([{"messages": messages}], "conversational", SFT(), "v6", tokenizer, 256)
    ids, targets = _expected(tokenizer, [
        ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n", False),
        ("4<|im_end|>", True),
        ("\n<|im_start|>user\nand 3+3?<|im_end|>\n<|im_start|>assistant\n", False),
        ("6<|im_end|>", True),
        ("\n", False),
    ])
    assert enc.ids == ids
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    assert enc.ids == tokenizer(full, add_special_tokens=False)["input_ids"]
    for t, (got, want) in enumerate(zip(enc.targets, targets)):
        assert got == want, (t, tokenizer.decode(enc.ids[: t + 2]))
    learned = [tokenizer.decode([enc.ids[t + 1]]) for t, x in enumerate(enc.targets) if x != IGNORE]
    assert learned == ["4", "<|im_end|>", "6", "<|im_end|>"]  # each turn's end token (SmolLM2's EOS) is learned
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token_id == tokenizer.eos_token_id
    # What precedes the first learned token is exactly the prompt generation is given.
    first = next(t for t, x in enumerate(enc.targets) if x != IGNORE) + 1
    head = tokenizer.apply_chat_template(messages[:2], tokenize=False, add_generation_prompt=True)
    assert enc.ids[:first] == tokenizer(head, add_special_tokens=False)["input_ids"]


def test_conversational_prompt_completion_adds_the_generation_prompt_once(tokenizer):
    from slmlab.evaluate.generate import format_prompt

    rec = EXAMPLES["prompt-completion (conversational)"][0]
    (enc,), _ = encode_records([rec], "prompt-completion (conversational)", SFT(), "v6", tokenizer, 128)
    header = tokenizer("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
    windows = [enc.ids[i: i + len(header)] for i in range(len(enc.ids))]
    assert windows.count(header) == 1
    first = next(t for t, x in enumerate(enc.targets) if x != IGNORE) + 1
    assert enc.ids[:first] == tokenizer(format_prompt(tokenizer, "2+2?"), add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(enc.ids[first:]) == "4<|im_end|>\n"
    # Preference: both answers share the prompt's tokens, each learned through its end token.
    chosen, rejected = encode_records(EXAMPLES["preference (conversational)"][:1], "preference (conversational)",
                                      DPO(), "v6", tokenizer, 128)[0]
    assert chosen.ids[:first] == rejected.ids[:first] == enc.ids[:first]
    assert [tokenizer.decode([i]) for i in chosen.targets if i != IGNORE] == ["4", "<|im_end|>"]
    assert [tokenizer.decode([i]) for i in rejected.targets if i != IGNORE] == ["5", "<|im_end|>"]


class _AddsBos:
    """The tokenizer, but adding BOS when asked for special tokens (as Llama's does)."""

    def __init__(self, tok):
        self._tok = tok

    def __getattr__(self, name):
        return getattr(self._tok, name)

    def __call__(self, text, add_special_tokens=True, **kw):
        out = self._tok(text, add_special_tokens=False, **kw)
        if add_special_tokens:
            out["input_ids"] = [self._tok.bos_token_id] + out["input_ids"]
        return out


def test_no_double_bos(tokenizer):
    tok = _AddsBos(tokenizer)
    messages = _msgs(("user", "hi"), ("assistant", "yo"))
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    assert text.startswith(tokenizer.bos_token)  # SmolLM2's template writes BOS (<|im_start|>) itself
    assert tok(text)["input_ids"][:2] == [tokenizer.bos_token_id] * 2  # the pitfall: tokenizing adds another
    ids, _ = conversation_tokens(messages, tok)
    assert ids[0] == tokenizer.bos_token_id and ids[1] != tokenizer.bos_token_id
    (enc,), _ = encode_records(EXAMPLES["prompt-completion"][:1], "prompt-completion", SFT(), "v6", tok, 64)
    assert tokenizer.bos_token_id not in enc.ids  # text prompts are given as written, like slmlab's own


# Qwen3-style: earlier assistant turns lose their reasoning, so a turn renders differently before and after it.
DROPS_THINKING = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n"
    "{% if m.role == 'assistant' and not loop.last %}{{ m.content.split('</think>')[-1] }}{% else %}{{ m.content }}"
    "{% endif %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def test_a_template_that_breaks_the_prefix_property_is_refused_with_the_reason(tmp_path, tokenizer, monkeypatch):
    monkeypatch.setattr(tokenizer, "chat_template", DROPS_THINKING)
    fine = {"messages": _msgs(("user", "2+2?"), ("assistant", "<think>add</think>4"))}
    broken = {"messages": _msgs(("user", "2+2?"), ("assistant", "<think>add</think>4"), ("user", "3+3?"),
                                ("assistant", "6"))}
    encoded, stats = encode_records([fine, broken], "conversational", SFT(), "v6", tokenizer, 128)
    assert [e.index for e in encoded] == [0] and stats.refused == 1 and stats.total == 2
    assert "record 2" in stats.reasons[0] and "differently alone than inside the whole conversation" in stats.reasons[0]
    path = write(tmp_path / "t.jsonl", [broken, broken])
    config = load_train_config(data={"model": "tiny-random", "data": {"train": str(path), "max_length": 128}})
    with pytest.raises(TrainingError, match=r"all 2 examples were refused.*record 1: the chat template renders"):
        prepare_data(config, tmp_path, tokenizer, SFT())


def test_text_shapes_learn_eos_once(tokenizer):
    eos = tokenizer.eos_token_id
    recs = [{"prompt": "2+2=", "completion": " 4"}, {"prompt": "2+2=", "completion": " 4" + tokenizer.eos_token}]
    a, b = encode_records(recs, "prompt-completion", SFT(), "v6", tokenizer, 64)[0]
    assert a.ids == b.ids and a.ids.count(eos) == 1 and a.targets[-2] == eos  # pad == EOS, and EOS is still learned
    assert tokenizer.decode([i for i in a.targets if i != IGNORE]) == " 4<|im_end|>"
    text = [{"text": "Two and two make four, and three and three make six."}]
    (lm,), _ = encode_records(text, "language-modelling", SFT(), "v6", tokenizer, 64)
    assert lm.ids[-1] == eos and lm.targets == lm.ids[1:] + [IGNORE]  # every token learned, EOS too
    (short,), stats = encode_records(text, "language-modelling", SFT(), "v6", tokenizer, 8, "left")
    assert len(lm.ids) > 8 and short.ids == lm.ids[:8] and stats.completion_truncated == 1  # keeps the beginning
    assert encode_records(text, "language-modelling", SFT(), "v6", tokenizer, 8)[1].dropped == 1


def test_masked_truncation_follows_encode_pair():
    from slmlab.train.batching import encode_pair

    prompt, completion = [5, 6, 7, 8], [9, 10]
    for max_length in (3, 4, 6, 8):
        for truncation in ("drop", "left"):
            mask = [False] * len(prompt) + [True] * len(completion)
            assert encode_masked(0, prompt + completion, mask, max_length, truncation) == \
                encode_pair(0, prompt, completion, max_length, truncation)


def _error(tmp_path, name, records_or_bytes, **kw) -> str:
    path = tmp_path / name
    if isinstance(records_or_bytes, bytes):
        path.write_bytes(records_or_bytes)
    else:
        write(path, records_or_bytes)
    with pytest.raises(SlmlabError) as exc:  # DatasetError, or JSONL's own reader's error (unchanged)
        read_dataset(path, **kw)
    return str(exc.value)


def test_malformed_files_give_one_clear_error(tmp_path):
    # Wrong shape: names the line, the keys, and every recognised shape.
    text = '{"prompt": "a", "completion": "b"}\n\n{"question": "a", "answer": "b"}\n'
    msg = _error(tmp_path, "wrong.jsonl", text.encode())
    assert f"{tmp_path / 'wrong.jsonl'}:3: no recognised dataset shape" in msg and "'question', 'answer'" in msg
    assert all(name in msg for name in SHAPES) and "data.columns" in msg
    # Mixed shapes: the first record of another shape, by line (JSONL) or row (columnar files).
    mixed = [{"prompt": "a", "completion": "b"}, {"prompt": "c", "completion": "d"}, {"text": "e"}]
    msg = _error(tmp_path, "mixed.jsonl", mixed)
    assert "mixed.jsonl:3: this record is language-modelling" in msg and "mixed.jsonl:1 is prompt-completion" in msg
    for kind in (".json", ".parquet"):
        assert f"mixed{kind}: row 3: this record is language-modelling" in _error(tmp_path, f"mixed{kind}", mixed)
    # Empty, in every file type.
    for name, data in (("e.jsonl", b""), ("e.json", b"[]"), ("e2.json", b"\n"), ("e.csv", b"prompt,completion\n"),
                       ("e2.csv", b"")):
        assert "no records" in _error(tmp_path, name, data), name
    import pandas as pd

    pd.DataFrame({"text": pd.Series([], dtype=str)}).to_parquet(tmp_path / "e.parquet")
    assert "no records" in _error(tmp_path, "e.parquet", (tmp_path / "e.parquet").read_bytes())
    # Bad values, unsupported shapes, unreadable files.
    msg = _error(tmp_path, "v.jsonl", [{"messages": [{"role": "user", "content": "a"}]}, {"messages": "hi"}])
    assert "v.jsonl:2: conversational record: field 'messages' must be a non-empty list" in msg
    assert "unpaired preference" in _error(tmp_path, "k.jsonl", [{"prompt": "a", "completion": "b", "label": True}])
    assert "implicit prompt" in _error(tmp_path, "i.jsonl", [{"chosen": _msgs(("user", "a")), "rejected": []}])
    assert "b.json:2: malformed JSON" in _error(tmp_path, "b.json", b'[{"text": "a"},\n {"text": }]')
    assert "b2.json:2: malformed JSON" in _error(tmp_path, "b2.json", b'{"text": "a"}\n{"text": \n')
    assert "cannot be read as Parquet" in _error(tmp_path, "b.parquet", b"not a parquet file")
    (tmp_path / "plain").mkdir()
    with pytest.raises(DatasetError, match="a directory, but not one written by datasets' save_to_disk"):
        read_dataset(tmp_path / "plain")


def test_splits_of_a_saved_dataset_dict(tmp_path):
    import datasets

    recs = EXAMPLES["prompt-completion"]
    datasets.DatasetDict({"train": datasets.Dataset.from_list(recs), "test": datasets.Dataset.from_list(recs[:1]),
                          "other": datasets.Dataset.from_list(recs[1:])}).save_to_disk(str(tmp_path / "dd"))
    assert read_dataset(tmp_path / "dd")[0] == recs  # several splits: "train" by default
    assert read_dataset(tmp_path / "dd", default_splits=("test",))[0] == recs[:1]
    assert read_dataset(tmp_path / "dd", split="other")[0] == recs[1:]
    with pytest.raises(DatasetError, match=r"dd: no split 'valid'; its splits: train, test, other"):
        read_dataset(tmp_path / "dd", split="valid")
    with pytest.raises(DatasetError, match="has splits train, test, other; choose one"):
        read_dataset(tmp_path / "dd", default_splits=("validation",))
    with pytest.raises(DatasetError, match="a single file has one split"):
        read_dataset(write(tmp_path / "x.jsonl", recs), split="test")


def test_columns_mapping(tmp_path, tokenizer):
    path = write(tmp_path / "qa.csv", [{"question": "2+2=", "answer": " 4", "n": 1}])
    recs, shape = read_dataset(path, columns={"question": "prompt", "answer": "completion"})
    assert shape == "prompt-completion" and recs == [{"prompt": "2+2=", "completion": " 4", "n": "1"}]  # CSV cells stay text
    with pytest.raises(DatasetError, match=r"qa.csv: row 1: data.columns maps 'q' to 'prompt', but the record has no 'q'"):
        read_dataset(path, columns={"q": "prompt"})
    clash = write(tmp_path / "clash.jsonl", [{"prompt": "a", "question": "b", "completion": "c"}])
    with pytest.raises(DatasetError, match="already has a 'prompt'"):
        read_dataset(clash, columns={"question": "prompt"})
    base = {"model": "tiny-random", "data": {"train": str(path), "columns": {"question": "prompt", "answer": "completion"}}}
    config = load_train_config(data=base)
    data = prepare_data(config, tmp_path, tokenizer, SFT())
    assert data.shape == "prompt-completion" and len(data.train) == 1
    with pytest.raises(SlmlabError, match="several columns map to 'prompt'"):
        load_train_config(data={"data": {"train": str(path), "columns": {"a": "prompt", "b": "prompt"}}})
    with pytest.raises(SlmlabError, match=r"data.columns.*not to a recipe"):
        load_train_config(data={"data": {"recipe": "logic", "columns": {"a": "prompt"}}})
    with pytest.raises(SlmlabError, match="splt"):
        load_train_config(data={"data": {"train": str(path), "splt": "train"}})  # extra="forbid" still


def test_conversational_preferences_and_an_eval_split_through_prepare_data(tmp_path, tokenizer):
    import datasets

    from slmlab.train.data import units

    prefs = EXAMPLES["preference (conversational)"]
    datasets.DatasetDict({"train": datasets.Dataset.from_list(prefs),
                          "test": datasets.Dataset.from_list(prefs[:1])}).save_to_disk(str(tmp_path / "prefs"))
    config = load_train_config(data={"model": "tiny-random", "objective": {"kind": "orpo"}, "data": {
        "train": str(tmp_path / "prefs"), "eval": str(tmp_path / "prefs"), "max_length": 64}})
    data = prepare_data(config, tmp_path, tokenizer, DPO())
    assert data.shape == data.eval_shape == "preference (conversational)"
    assert [[e.index for e in u] for u in units(data.train, 2)] == [[0, 1], [2, 3]] and len(data.evals) == 2
    sft = load_train_config(data={"model": "tiny-random", "data": {"train": str(tmp_path / "prefs"), "split": "test"}})
    with pytest.raises(TrainingError, match=r"objective 'sft' cannot train on preference \(conversational\) records"):
        prepare_data(sft, tmp_path, tokenizer, SFT())


def test_objective_and_shape_must_match(tmp_path):
    with pytest.raises(TrainingError, match=r"objective 'dpo' cannot train on prompt-completion records.*it accepts: "
                                            r"preference \(conversational\)"):
        check_objective(DPO(), "prompt-completion", "d.jsonl")
    with pytest.raises(TrainingError, match=r"objective 'sft' cannot train on preference \(text\) records"):
        check_objective(SFT(), "preference (text)", "d.jsonl")
    assert detect_shape([{"input": "a", "output": "b", "text": "c"}], "x") == "slmlab"  # slmlab wins over `text`


def test_a_trl_dataset_trains_identically_from_jsonl_parquet_and_save_to_disk(tmp_path):
    from slmlab.train.loop import run

    records = [{"prompt": f"P{i}→Q{i},P{i}?", "completion": " Q" if i % 2 else " no"} for i in range(12)]
    losses = {}
    for kind in (".jsonl", ".parquet", ""):
        path = write(tmp_path / f"pc{kind}", records)
        config = load_train_config(data={
            "name": f"r{kind or 'dir'}", "model": "tiny-random", "output_dir": str(tmp_path / "runs"), "seed": 1,
            "adapter": {"r": 2, "alpha": 4}, "data": {"train": str(path), "max_length": 32},
            "optimizer": {"lr": 1e-2}, "batch_size": 4, "max_steps": 3, "save_every": None,
            "watch": {"enabled": False, "dashboard": False},
        })
        losses[kind] = run(config).losses
    assert len(losses[".jsonl"]) == 3
    assert losses[".jsonl"] == losses[".parquet"] == losses[""]
