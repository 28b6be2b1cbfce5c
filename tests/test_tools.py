"""Tool registry, call formatting and parsing, and the bare/scaffolded example generators."""

from __future__ import annotations

import json
import random
import re
import textwrap

import pytest

from slmlab.data.tools import (
    SPECIALIST_PREFIX,
    RegistryError,
    ToolCall,
    ToolError,
    call_format,
    call_matches,
    format_call,
    load_registry,
    make_tool_example,
    parse_tool_calls,
)

SHIPPED = ["calculator", "datetime", "unit_convert", "web_search", "wiki_lookup"]


@pytest.fixture(scope="module")
def registry():
    return load_registry()


# --------------------------------------------------------------------------- registry


def test_shipped_registry_has_the_five_tools(registry):
    assert sorted(registry.tools) == SHIPPED
    assert registry.tools["wiki_lookup"].properties == ["wiki", "page"]
    assert registry.tools["unit_convert"].properties == ["value", "from", "to"]
    assert registry.tools["unit_convert"].parameters["properties"]["value"]["type"] == "number"
    for spec in registry.tools.values():
        assert spec.parameters["additionalProperties"] is False
        assert spec.generate is not None and spec.when


def test_get_unknown_tool_suggests_close_names(registry):
    with pytest.raises(ToolError, match=r"Unknown tool 'calculater'\. Did you mean 'calculator'\?.*Available: calculator, datetime"):
        registry.get("calculater")
    assert issubclass(ToolError, ValueError)


# --------------------------------------------------------------------------- formatting


def test_format_call_is_compact_in_schema_order_and_keeps_unicode():
    call = format_call("wiki_lookup", {"page": "Björk", "wiki": "wikipedia"})
    assert call == '[wiki_lookup:{"wiki":"wikipedia","page":"Björk"}]'
    assert format_call("calculator", {"expression": "17*23"}, specialist=True) == (
        'SPECIALIST_REQUEST[calculator:{"expression":"17*23"}]'
    )
    # A tool the registry does not know keeps the caller's key order.
    assert format_call("my_tool", {"b": 1, "a": [1, 2]}) == '[my_tool:{"b":1,"a":[1,2]}]'


def test_format_call_rejects_unwritable_arguments():
    with pytest.raises(ToolError, match="mapping"):
        format_call("calculator", ["17*23"])  # type: ignore[arg-type]
    with pytest.raises(ToolError, match="cannot be written as JSON"):
        format_call("unit_convert", {"value": float("nan"), "from": "km", "to": "mi"})


def test_call_format_shows_the_shape():
    spec = load_registry().get("wiki_lookup")
    assert call_format(spec) == '[wiki_lookup:{"wiki": ..., "page": ...}]'
    assert call_format(spec, specialist=True).startswith(SPECIALIST_PREFIX + "[")


# --------------------------------------------------------------------------- parsing


def test_parse_single_valid_call():
    (call,) = parse_tool_calls('[calculator:{"expression":"17*23"}]')
    assert call.valid and call.errors == []
    assert (call.name, call.arguments, call.specialist) == ("calculator", {"expression": "17*23"}, False)
    assert (call.start, call.end) == (0, len('[calculator:{"expression":"17*23"}]'))


def test_parse_finds_every_call_in_prose_with_positions():
    text = (
        'Sure. SPECIALIST_REQUEST[wiki_lookup:{"wiki":"wikipedia","page":"Nine Inch Nails"}] and then '
        '[datetime:{"tz":"Asia/Tokyo"}]. A [note: not a call] and [x] stay prose.'
    )
    calls = parse_tool_calls(text)
    assert [c.name for c in calls] == ["wiki_lookup", "datetime"]
    assert [c.specialist for c in calls] == [True, False]
    assert all(c.valid for c in calls)
    for c in calls:
        assert text[c.start : c.end] == c.raw
    assert calls[0].raw.startswith(SPECIALIST_PREFIX)


def test_parse_handles_braces_brackets_and_quotes_inside_strings():
    text = r'[web_search:{"query":"a ]}[{ b \" c \\ d"}] tail'
    (call,) = parse_tool_calls(text)
    assert call.valid, call.errors
    assert call.arguments == {"query": 'a ]}[{ b " c \\ d'}
    assert call.raw == text[: -len(" tail")]


def test_parse_nested_json_validates_against_schema():
    # Nested values parse; the schema then rejects them because calculator takes a string.
    (call,) = parse_tool_calls('[calculator:{"expression":{"op":"+","args":[1,[2,3]]}}]')
    assert call.arguments == {"expression": {"op": "+", "args": [1, [2, 3]]}}
    assert not call.valid
    assert any("arguments.expression" in e and "not of type 'string'" in e for e in call.errors)


def test_parse_malformed_json_gives_errors_not_exceptions():
    text = 'try [calculator:{"expression": 2+}] then [wiki_lookup:{"wiki":"wikipedia","page":"Kraftwerk"}]'
    bad, good = parse_tool_calls(text)
    assert bad.arguments is None and not bad.valid
    assert bad.raw == '[calculator:{"expression": 2+}]'
    assert any("not valid JSON" in e for e in bad.errors)
    assert good.valid and good.arguments["page"] == "Kraftwerk"


@pytest.mark.parametrize(
    "text, fragment",
    [
        ('[calculator:{"expression":"1+1"}', "missing closing ']'"),
        ('[calculator:{"expression":"1+', "not valid JSON"),
        ('[calculator:{"expression":"1"}, ]', "missing closing ']'"),
        ('[calculator:{"expression":NaN}]', "not valid JSON"),
        ('[calculater:{"expression":"1"}]', "Did you mean 'calculator'"),
        ('[calculator:{}]', "'expression' is a required property"),
        ('[calculator:{"expression":"1","mode":"x"}]', "Additional properties are not allowed"),
        ('[unit_convert:{"value":"12","from":"km","to":"mi"}]', "arguments.value: '12' is not of type 'number'"),
    ],
)
def test_parse_reports_what_is_wrong(text, fragment):
    (call,) = parse_tool_calls(text)
    assert not call.valid
    assert any(fragment in e for e in call.errors), call.errors


def test_parse_tolerates_whitespace_around_the_json():
    (call,) = parse_tool_calls('[calculator: {"expression": "1 + 1"} ]')
    assert call.valid and call.arguments == {"expression": "1 + 1"}


def test_parse_truncated_fragment_stops_at_end_of_line():
    (call,) = parse_tool_calls('[calculator:{"expression":"1+\nnext line')
    assert call.raw == '[calculator:{"expression":"1+'
    assert not call.valid


def test_parse_text_without_calls():
    assert parse_tool_calls("no calls here, just [brackets] and {braces}") == []


def test_parse_uses_a_given_registry(tmp_path):
    reg = load_registry(_write(tmp_path, _MINIMAL))
    (call,) = parse_tool_calls('[calculator:{"expression":"1"}]', reg)
    assert not call.valid and any("Unknown tool 'calculator'" in e for e in call.errors)
    (call,) = parse_tool_calls('[echo:{"text":"hi"}]', reg)
    assert call.valid


# --------------------------------------------------------------------------- matching


def _call(arguments, name="unit_convert", specialist=False) -> ToolCall:
    return ToolCall(name, arguments, "", 0, 0, specialist)


def test_call_matches_numbers_by_value_strings_exactly():
    expected = {"name": "unit_convert", "arguments": {"value": 12, "from": "km", "to": "mi"}}
    assert call_matches(_call({"value": 12.0, "from": "km", "to": "mi"}), expected)
    assert not call_matches(_call({"value": "12", "from": "km", "to": "mi"}), expected)
    assert not call_matches(_call({"value": 12, "from": "KM", "to": "mi"}), expected)
    assert not call_matches(_call({"value": 12, "from": "km"}), expected)
    assert not call_matches(_call({"value": 12, "from": "km", "to": "mi"}, name="calculator"), expected)
    assert not call_matches(_call(None), expected)
    assert not call_matches(_call({"flag": True}), {"name": "unit_convert", "arguments": {"flag": 1}})


def test_call_matches_checks_specialist_only_when_expected_says_so():
    expected = {"name": "datetime", "arguments": {"tz": "Europe/Paris"}}
    call = _call({"tz": "Europe/Paris"}, name="datetime", specialist=True)
    assert call_matches(call, expected)
    assert not call_matches(call, {**expected, "specialist": False})
    with pytest.raises(ToolError, match="expected call"):
        call_matches(call, {"arguments": {}})


# --------------------------------------------------------------------------- generation


def test_2000_examples_round_trip_through_the_parser(registry):
    rng = random.Random(1234)
    seen_tools = set()
    for i in range(2000):
        style, specialist = ("bare", "scaffolded")[i % 2], (i // 2) % 2 == 1
        ex = make_tool_example(rng, style=style, specialist=specialist, registry=registry)
        assert set(ex) == {"input", "output", "family", "style", "expected_call"}
        assert ex["style"] == style and ex["family"] == ex["expected_call"]["name"]
        expected = json.loads(json.dumps(ex["expected_call"]))  # as read back from a JSONL file
        assert ex["output"] == format_call(expected["name"], expected["arguments"], specialist=specialist)
        calls = parse_tool_calls(ex["output"], registry)
        assert len(calls) == 1, ex
        call = calls[0]
        assert call.valid, (ex, call.errors)
        assert call.raw == ex["output"] and call.specialist == specialist
        assert call_matches(call, expected) and call.arguments == expected["arguments"]
        seen_tools.add(ex["family"])
    assert sorted(seen_tools) == SHIPPED


def test_generation_is_deterministic_given_the_rng():
    def batch(seed):
        rng = random.Random(seed)
        return [make_tool_example(rng, style=s) for s in ["bare", "scaffolded"] * 20]

    assert batch(7) == batch(7)
    assert batch(7) != batch(8)


@pytest.mark.parametrize(
    "tool, pattern",
    [
        ("wiki_lookup", r"\?lookup:.+"),
        ("calculator", r"\?calc:[\d()+\-*/]+"),
        ("unit_convert", r"\?convert:[\d.]+ \S+->\S+"),
        ("web_search", r"\?search:.+"),
        ("datetime", r"\?time:.+"),
    ],
)
def test_bare_inputs_are_terse(tool, pattern):
    rng = random.Random(0)
    for _ in range(20):
        ex = make_tool_example(rng, style="bare", tool=tool)
        assert re.fullmatch(pattern, ex["input"]), ex["input"]
        assert make_tool_example(rng, style="bare", tool=tool, specialist=True)["input"].startswith("!")


def test_bare_calculator_input_carries_the_expression():
    ex = make_tool_example(random.Random(3), style="bare", tool="calculator")
    assert ex["input"] == "?calc:" + ex["expected_call"]["arguments"]["expression"]


def test_scaffolded_inputs_explain_when_and_how(registry):
    rng = random.Random(5)
    inputs = set()
    for _ in range(200):
        ex = make_tool_example(rng, style="scaffolded", tool="wiki_lookup")
        spec = registry.get("wiki_lookup")
        assert spec.when in ex["input"]
        assert call_format(spec) in ex["input"]
        assert ex["expected_call"]["arguments"]["page"] in ex["input"]
        inputs.add(ex["input"])
    # The seed's shape is among the phrasings.
    seed_shape = (
        'When you need information about a band, artist, or album, use the wiki lookup tool. '
        'Format: [wiki_lookup:{"wiki": ..., "page": ...}] Query: lookup information about '
    )
    assert any(i.startswith(seed_shape) for i in inputs)
    assert len({i.split("Query")[0].split("Request")[0] for i in inputs}) >= 4  # several scaffold wordings


def test_scaffolded_specialist_inputs_mention_the_prefix():
    rng = random.Random(9)
    for _ in range(50):
        ex = make_tool_example(rng, style="scaffolded", specialist=True)
        assert SPECIALIST_PREFIX in ex["input"]
        assert ex["output"].startswith(SPECIALIST_PREFIX + "[")


def test_unit_convert_values_are_numbers_shown_as_written():
    rng = random.Random(11)
    for _ in range(100):
        ex = make_tool_example(rng, style="bare", tool="unit_convert")
        value = ex["expected_call"]["arguments"]["value"]
        assert isinstance(value, (int, float)) and not isinstance(value, bool)
        assert ex["input"].startswith(f"?convert:{value} ")
        assert f'"value":{value},' in ex["output"]


def test_unknown_style_and_tool_are_clear_errors():
    rng = random.Random(0)
    with pytest.raises(ToolError, match=r"Unknown style 'fancy'\. Valid styles: bare, scaffolded"):
        make_tool_example(rng, style="fancy")
    with pytest.raises(ToolError, match=r"Unknown tool 'wiki'.*Available: calculator"):
        make_tool_example(rng, tool="wiki")


# --------------------------------------------------------------------------- user registries

_MINIMAL = """
tools:
  - name: echo
    description: Repeats text.
    when: the user asks you to repeat something
    parameters:
      type: object
      properties:
        text: {type: string}
      required: [text]
      additionalProperties: false
    generate:
      values:
        text: {choice: [hello, good night]}
      bare: "echo:{text}"
      queries: ["please repeat '{text}'"]
  - name: parse_only
    description: Has no generator; calls to it can still be parsed.
    parameters: {type: object, properties: {}, additionalProperties: false}
"""


def _write(tmp_path, text: str, name: str = "tools.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def test_user_registry_generates_and_parses(tmp_path):
    reg = load_registry(_write(tmp_path, _MINIMAL))
    assert sorted(reg.tools) == ["echo", "parse_only"]
    rng = random.Random(0)
    ex = make_tool_example(rng, style="scaffolded", registry=reg)
    assert ex["family"] == "echo" and "the user asks you to repeat something" in ex["input"]
    assert parse_tool_calls(ex["output"], reg)[0].valid
    assert parse_tool_calls("[parse_only:{}]", reg)[0].valid
    with pytest.raises(ToolError, match="'parse_only' has no `generate` section; tools that can generate: echo"):
        make_tool_example(rng, tool="parse_only", registry=reg)


def _tool(**overrides) -> dict:
    tool = {
        "name": "echo",
        "description": "Repeats text.",
        "when": "asked to repeat",
        "parameters": {
            "type": "object",
            "properties": {"text": {"type": "string"}},
            "required": ["text"],
            "additionalProperties": False,
        },
        "generate": {"values": {"text": {"choice": ["a", "b"]}}, "bare": "echo:{text}", "queries": ["say {text}"]},
    }
    tool.update(overrides)
    return {k: v for k, v in tool.items() if v is not None}


def _gen(**overrides) -> dict:
    return {**_tool()["generate"], **overrides}


@pytest.mark.parametrize(
    "data, fragment",
    [
        ([1, 2], "expected a mapping with a `tools` list"),
        ({"tools": []}, "`tools` must be a non-empty list"),
        ({"tools": [_tool()], "extra": 1}, "unknown field(s) 'extra'"),
        ({"tools": [_tool(description=None)]}, "tools[0] (echo): missing required field 'description'"),
        ({"tools": [_tool(name="bad name")]}, "tools[0].name: expected a tool name"),
        ({"tools": [_tool(), _tool()]}, "tool name 'echo' is defined twice"),
        ({"tools": [_tool(colour="red")]}, "tools[0] (echo): unknown field(s) 'colour'"),
        ({"tools": [_tool(parameters=None)]}, "(echo).parameters: missing"),
        ({"tools": [_tool(parameters={"type": 12, "properties": {}})]}, "(echo).parameters.type: not a valid JSON Schema"),
        ({"tools": [_tool(parameters={"type": "object", "properties": {"text": {"type": "string"}}})]},
         "parameters.additionalProperties: must be false"),
        ({"tools": [_tool(parameters={"type": "object", "properties": {}, "required": ["x"], "additionalProperties": False})]},
         "parameters.required: ['x'] are not in properties"),
        ({"tools": [_tool(when=None)]}, "(echo).when: required when the tool has `generate`"),
        ({"tools": [_tool(generate=_gen(values={"text": {"lexicon": "nope"}}))]},
         "generate.values.text.lexicon: Unknown lexicon 'nope'"),
        ({"tools": [_tool(generate=_gen(values={"text": {"rand": 1}}))]}, "generate.values.text: expected a mapping with exactly one of"),
        ({"tools": [_tool(generate=_gen(values={"other": {"const": "x"}}))]}, "nothing fills required parameter 'text'"),
        ({"tools": [_tool(generate=_gen(queries=["say {txt}"]))]}, "generate.queries[0]: unknown placeholder {txt}; available: text"),
        ({"tools": [_tool(generate=_gen(bare="echo:{text"))]}, "generate.bare: malformed placeholder"),
        ({"tools": [_tool(generate=_gen(values={"text": {"int": [1, 5]}}))]},
         "generated arguments {'text': "),
        ({"tools": [_tool(generate=_gen(values={"text": {"int": [5, 1]}}))]}, "text.int: expected [low, high]"),
        ({"tools": [_tool()], "lexicons": {"rows": [{"a": 1}, {"b": 2}]}}, "lexicons.rows[1]: expected a mapping with keys ['a']"),
    ],
)
def test_bad_registry_files_name_file_tool_and_field(tmp_path, data, fragment):
    import yaml

    path = _write(tmp_path, yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(RegistryError) as info:
        load_registry(path)
    message = str(info.value)
    assert str(path) in message
    assert fragment in message, message
    assert isinstance(info.value, ValueError)


def test_registry_file_errors_for_missing_and_invalid_yaml(tmp_path):
    with pytest.raises(ValueError, match="no such file"):
        load_registry(tmp_path / "missing.yaml")
    with pytest.raises(ValueError, match=r"bad\.yaml:\d+:\d+: not valid YAML"):
        load_registry(_write(tmp_path, "tools: [\n  - name: x\n", "bad.yaml"))
