"""Prompt templates: loading, validation, rendering, and a stable prompt/completion token boundary."""

from __future__ import annotations

import random

import pytest

from slmlab.data.roles import (
    Template,
    TemplateError,
    list_templates,
    load_template,
    render,
    render_prompt,
    token_boundary_ok,
)
from slmlab.data.tools import make_tool_example

SHIPPED = ["chat", "creative", "dialectical", "logical", "v6"]
END_OF_TURN = "<|im_end|>"  # SmolLM2's end-of-turn marker, which is also its eos and pad token

# Outputs of every shape the datasets produce, plus awkward ones for the token boundary.
OUTPUTS = [
    "●",
    "○",
    "◐ because P→Q holds and P is false, so Q is open.",
    '[calculator:{"expression":"17*23"}]',
    'SPECIALIST_REQUEST[wiki_lookup:{"wiki":"wikipedia","page":"Björk"}]',
    "42",
    "-3.5",
    "Roses bloom.\n\nThe second stanza\nhas two lines.",
    "\"Quoted\" answer",
    "{curly}",
    ".",
    "\nstarts with a newline",
]


@pytest.fixture(scope="module")
def tok(tokenizer):
    """The SmolLM2 tokenizer (the session fixture in conftest loads it once)."""
    assert tokenizer.eos_token == END_OF_TURN
    return tokenizer


def _records() -> list[dict]:
    rng = random.Random(0)
    tools = [make_tool_example(rng, style=s, specialist=sp) for s in ("bare", "scaffolded") for sp in (False, True) for _ in range(10)]
    plain = [{"input": f"P→Q,P?Q (case {i})", "output": out} for i, out in enumerate(OUTPUTS)]
    return plain + [{"input": t["input"], "output": t["output"]} for t in tools]


def test_list_templates_has_the_shipped_ones():
    assert list_templates() == SHIPPED


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_templates_load(name):
    tmpl = load_template(name)
    assert tmpl.name == name and tmpl.description
    assert tmpl.kind == ("chat" if name == "chat" else "text")


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_template_renders_consistently(name, tok):
    tmpl = load_template(name)
    for rec in _records():
        prompt, completion = render(rec, tmpl, tok)
        assert prompt == render_prompt(rec["input"], tmpl, tok)
        assert rec["input"] in prompt
        assert completion.endswith(tok.eos_token) or completion.endswith(tok.eos_token + "\n")
        assert rec["output"] in completion
        assert token_boundary_ok(prompt, completion, tok), (name, rec)


@pytest.mark.parametrize("name", ["v6", "creative", "logical", "dialectical"])
def test_text_completions_end_with_eos(name, tok):
    tmpl = load_template(name)
    prompt, completion = render({"input": "x", "output": "●"}, tmpl, tok)
    assert completion == tmpl.completion_prefix + "●" + tok.eos_token
    assert prompt.endswith("\n") or name == "v6"


def test_v6_is_question_answer_with_a_leading_space(tok):
    prompt, completion = render({"input": "P→Q,P?Q", "output": "●"}, load_template("v6"), tok)
    assert prompt == "Q: P→Q,P?Q\nA:"
    assert completion == " ●" + END_OF_TURN


def test_role_templates_frame_thesis_antithesis_synthesis(tok):
    tags = {"creative": "[THESIS]\n", "logical": "[ANTITHESIS]\n", "dialectical": "[SYNTHESIS]\n"}
    for name, tag in tags.items():
        prompt, _ = render({"input": "Is P true?", "output": "◐"}, load_template(name), tok)
        assert prompt.startswith(f"[{name.upper()}]\n") and prompt.endswith(f"\n\n{tag}")


def test_chat_completion_is_output_plus_end_of_turn(tok):
    tmpl = load_template("chat")
    rec = {"input": "What is 17*23?", "output": '[calculator:{"expression":"17*23"}]'}
    prompt, completion = render(rec, tmpl, tok)
    assert completion == rec["output"] + END_OF_TURN + "\n"
    full = tok.apply_chat_template(
        [{"role": "user", "content": rec["input"]}, {"role": "assistant", "content": rec["output"]}], tokenize=False
    )
    assert prompt + completion == full
    assert prompt.endswith("<|im_start|>assistant\n")
    prompt_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    full_ids = tok(full, add_special_tokens=False)["input_ids"]
    assert full_ids[: len(prompt_ids)] == prompt_ids
    assert tok.convert_tokens_to_ids(END_OF_TURN) in full_ids[len(prompt_ids):]


def test_chat_template_with_system_message(tmp_path, tok):
    path = tmp_path / "sys.yaml"
    path.write_text('name: sys\nkind: chat\nsystem: "You answer with one glyph."\nprompt: "Puzzle: {input}"\n', encoding="utf-8")
    tmpl = load_template(path)
    prompt, completion = render({"input": "P?P", "output": "●"}, tmpl, tok)
    assert "<|im_start|>system\nYou answer with one glyph.<|im_end|>" in prompt
    assert "SmolLM" not in prompt  # the default system prompt is replaced, not added
    assert "<|im_start|>user\nPuzzle: P?P<|im_end|>" in prompt
    assert completion == "●" + END_OF_TURN + "\n"


def test_boundary_check_catches_a_merge(tok):
    # The documented exception: an output starting with spaces merges with a prompt's final newline.
    prompt, completion = render({"input": "x", "output": "  indented"}, load_template("creative"), tok)
    assert not token_boundary_ok(prompt, completion, tok)


def test_template_input_with_braces_is_not_reformatted(tok):
    prompt = render_prompt('use [calc:{"expression": ...}] on {x}', load_template("v6"), tok)
    assert prompt == 'Q: use [calc:{"expression": ...}] on {x}\nA:'


def test_load_by_path_and_passthrough(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text('name: mine\nkind: text\nprompt: "In: {input}\\nOut:"\ncompletion_prefix: " "\n', encoding="utf-8")
    tmpl = load_template(str(path))
    assert (tmpl.name, tmpl.prompt, tmpl.completion_prefix, tmpl.source) == ("mine", "In: {input}\nOut:", " ", str(path))
    assert load_template(tmpl) is tmpl


def test_unknown_template_name_suggests():
    with pytest.raises(TemplateError, match=r"Unknown template 'creativ'\. Did you mean 'creative'.*Available: chat, creative"):
        load_template("creativ")
    with pytest.raises(TemplateError, match="no such template file"):
        load_template("missing/template.yaml")


@pytest.mark.parametrize(
    "body, fragment",
    [
        ("- a\n- b\n", "expected a mapping"),
        ("name: t\nkind: text\nprompt: '{input}'\ncolor: red\n", "unknown field(s) 'color'"),
        ("name: t\nkind: text\n", "missing required field 'prompt'"),
        ("kind: text\nprompt: '{input}'\n", "missing required field 'name'"),
        ("name: t\nkind: text\nprompt: 'no placeholder'\n", "field 'prompt' must contain the placeholder {input}"),
        ("name: t\nkind: text\nprompt: '{input} -> {output}'\n", "field 'prompt': unknown placeholder(s) {output}"),
        ("name: t\nkind: text\nprompt: '{input} {'\n", "field 'prompt': malformed placeholder"),
        ("name: t\nkind: audio\nprompt: '{input}'\n", "field 'kind' must be one of text, chat"),
        ("name: t\nkind: text\nprompt: 3\n", "field 'prompt' must be a string"),
        ("name: t\nkind: text\nprompt: '{input}'\nsystem: hi\n", "field 'system' is only used by chat templates"),
        ("name: t\nkind: text\nprompt: 'Q: {input} A: '\n", "field 'prompt' ends with a space"),
        ("name: t\nkind: text\nprompt: [unclosed\n", "not valid YAML"),
    ],
)
def test_malformed_template_files_name_file_and_field(tmp_path, body, fragment):
    path = tmp_path / "bad.yaml"
    path.write_text(body, encoding="utf-8")
    with pytest.raises(TemplateError if "YAML" not in fragment else ValueError) as info:
        load_template(path)
    assert str(path) in str(info.value)
    assert fragment in str(info.value), str(info.value)


def test_record_without_output_is_a_clear_error(tok):
    with pytest.raises(ValueError, match=r"record 'r1'.*field 'output' must be a string"):
        render({"id": "r1", "input": "x"}, load_template("v6"), tok)


# --------------------------------------------------------------------------- tokenizers without SmolLM2's properties


class _StubTokenizer:
    """Just enough of a tokenizer to exercise chat-template edge cases."""

    name_or_path = "stub"

    def __init__(self, render_fn, eos="</s>", chat_template="stub"):
        self._render, self.eos_token, self.chat_template = render_fn, eos, chat_template

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=False):
        return self._render(messages, add_generation_prompt)


def _turns(messages, add_generation_prompt, end="<end>"):
    text = "".join(f"<{m['role']}>{m['content']}{end}" for m in messages)
    return text + ("<assistant>" if add_generation_prompt else "")


CHAT = Template(name="chat", kind="chat", prompt="{input}", source="test")


def test_eos_is_appended_when_the_chat_template_ends_turns_differently():
    prompt, completion = render({"input": "hi", "output": "yo"}, CHAT, _StubTokenizer(_turns))
    assert prompt == "<user>hi<end><assistant>"
    assert completion == "yo<end></s>"


def test_prefix_inconsistent_chat_template_is_a_clear_error():
    def inconsistent(messages, add_generation_prompt):
        # Like templates that render the generation prompt differently from a finished assistant turn.
        return _turns(messages, False) + ("<assistant>\n" if add_generation_prompt else "")

    with pytest.raises(TemplateError, match="cannot be split consistently"):
        render({"input": "hi", "output": "yo"}, CHAT, _StubTokenizer(inconsistent))


def test_tokenizer_without_chat_template_or_eos():
    with pytest.raises(TemplateError, match="has no chat template; use a text template such as v6"):
        render_prompt("hi", CHAT, _StubTokenizer(_turns, chat_template=None))
    with pytest.raises(ValueError, match="has no eos_token"):
        render({"input": "hi", "output": "yo"}, load_template("v6"), _StubTokenizer(_turns, eos=None))


def test_chat_template_failures_are_wrapped():
    def failing(messages, add_generation_prompt):
        raise RuntimeError("System role not supported")

    with pytest.raises(TemplateError, match="chat template failed: System role not supported"):
        render_prompt("hi", CHAT, _StubTokenizer(failing))
