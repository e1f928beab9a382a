"""JSON-schema constrained decoding (axon_llm/constrained.py): the recogniser, the token index
against its reference, and the property that every constrained output parses and validates."""

import json

import jsonschema
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from axon_llm.constrained import (
    JsonConstraint, JsonTokenIndex, allowed_tokens_ref, can_finish, compile_schema, feed, initial_state,
    min_completion, schema_from_response_format,
)
from axon_llm.errors import InputError

# a small vocabulary: every byte alone plus multi-byte pieces a BPE vocabulary has
_MULTI = [b'{"', b'":', b'",', b'"}', b'"]', b'["', b'true', b'false', b'null', b'12', b'-3', b'.5', b'e+7',
          b' "', b'abc', b'\\n', b'\\u00e9', "é".encode(), b'name', b'age', b'"name', b'":"', b'}}', b', ',
          b': ', b'0', b'"a"', b'\\', b'x"y', b'\xc3']
PIECES = [bytes([c]) for c in range(256)] + _MULTI
EOS = len(PIECES)
INDEX = JsonTokenIndex(PIECES + [None], eos_token_ids=[EOS])

PERSON = {"type": "object",
          "properties": {"name": {"type": "string"}, "age": {"type": "integer"},
                         "tags": {"type": "array", "items": {"enum": ["a", "b", 3]}, "maxItems": 2},
                         "ok": {"type": ["boolean", "null"]}},
          "required": ["name", "age"], "additionalProperties": False}


def _state(node_schema, text: bytes):
    return feed(initial_state(compile_schema(node_schema)), text)


@pytest.mark.parametrize("text, ok", [
    (b'{"name": "Ann", "age": 31}', True),
    (b'{"age":-0,"name":"\\u00e9\\n","tags":["a",3],"ok":null}', True),
    (b'{"name": "Ann"}', False),                       # a required key missing: '}' rejected
    (b'{"name": "Ann", "age": 3.5}', False),           # not an integer
    (b'{"nam": 1', False),                             # not a property
    (b'{"name": "A", "age": 1, "tags": ["a","b","a"]}', False),   # maxItems
    (b'{"name": "A", "age": 01}', False),              # leading zero
])
def test_recogniser_accepts_exactly_the_valid_documents(text, ok):
    state = _state(PERSON, text)
    assert (state is not None and can_finish(state)) == ok
    if ok:
        jsonschema.validate(json.loads(text), PERSON)


def test_min_completion_counts_the_bytes_of_the_shortest_completion():
    # '{' then the cheapest: "name":"" , "age":0 }  -> 8 + 1 + 7 + 1 bytes
    assert min_completion(_state(PERSON, b'{')) == len(b'"name":"","age":0}')
    assert min_completion(_state(PERSON, b'{"name": "Ann", "age": 3')) == 1
    assert min_completion(_state({"type": "array", "minItems": 2, "items": {"type": "null"}}, b'[')) == \
        len(b'null,null]')


@pytest.mark.parametrize("schema", [PERSON, {"type": "object"}, {"enum": ["red", "green", 7]},
                                    {"type": "array", "items": {"type": "number"}}])
def test_token_index_matches_the_reference_on_every_state_of_a_walk(schema):
    rng = np.random.default_rng(0)
    c = JsonConstraint(INDEX, schema)
    for remaining in range(30, 0, -1):
        ids, cost = INDEX.allowed(c.state)
        ref = allowed_tokens_ref(PIECES, c.state)
        assert dict(zip(ids.tolist(), cost.tolist())) == ref
        choices = [t for t in np.flatnonzero(c.allowed(remaining)) if t != EOS]
        if not choices or c.done:
            break
        c.advance(int(rng.choice(choices)))


_names = st.sampled_from(["a", "b", "name", "x y", "é"])
_leaf = st.one_of(
    st.sampled_from([{"type": t} for t in ("string", "integer", "number", "boolean", "null")]),
    st.lists(st.one_of(st.text(max_size=3), st.integers(-5, 50), st.booleans(), st.none()),
             min_size=1, max_size=3).map(lambda v: {"enum": v}),
    st.just({"type": ["string", "null"]}),
)


def _containers(children):
    arrays = st.tuples(children, st.integers(0, 2), st.integers(0, 2)).map(
        lambda t: {"type": "array", "items": t[0], "minItems": t[1], "maxItems": t[1] + t[2]})
    obj = st.builds(lambda props, req_mask, extra: {
        "type": "object", "properties": props,
        "required": [k for k, r in zip(props, req_mask) if r], "additionalProperties": extra},
        st.dictionaries(_names, children, max_size=3), st.lists(st.booleans(), min_size=3, max_size=3), st.booleans())
    return st.one_of(obj, arrays)


SCHEMAS = st.recursive(_leaf, _containers, max_leaves=6)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(schema=SCHEMAS, extra_budget=st.integers(0, 25), seed=st.integers(0, 2 ** 32 - 1))
def test_every_constrained_output_parses_and_validates(schema, extra_budget, seed):
    """Random walks over the allowed tokens, EOS taken when offered with some chance: whatever
    is picked, the output within the budget is a complete document the schema accepts."""
    rng = np.random.default_rng(seed)
    c = JsonConstraint(INDEX, schema)
    budget = int(c.min_tokens) + extra_budget
    for remaining in range(budget, 0, -1):
        if c.done:
            break
        mask = c.allowed(remaining)
        assert mask.any(), "a dead end: no token allowed"
        if mask[EOS] and rng.random() < 0.3:
            break
        choices = np.flatnonzero(mask[:EOS])
        if choices.size == 0:
            break
        c.advance(int(rng.choice(choices)))
    assert can_finish(c.state), c.text
    value = json.loads(c.text.decode("utf-8", errors="replace"))
    jsonschema.validate(value, schema)


@pytest.mark.parametrize("schema, words", [
    ({"type": "object", "properties": {"a": {"type": "string", "pattern": "x"}}}, "pattern"),
    ({"type": "strin"}, "type must be"),
    ({"type": "object", "properties": {}, "required": ["a"], "additionalProperties": False}, "required"),
    ({"$ref": "#/$defs/A", "$defs": {"A": {"$ref": "#/$defs/A"}}}, "recursive"),
    ({"anyOf": [{"type": "object"}, {"type": "object"}]}, "different types"),
    ("not a schema", "JSON object"),
])
def test_an_invalid_or_unsupported_schema_is_a_clear_input_error(schema, words):
    with pytest.raises(InputError, match=words):
        compile_schema(schema)


def test_response_format_maps_to_a_schema():
    assert schema_from_response_format({"type": "json_object"}) == {"type": "object"}
    assert schema_from_response_format({"type": "json_schema", "json_schema": {"schema": PERSON}}) is PERSON
    assert schema_from_response_format({"type": "text"}) is None
    with pytest.raises(InputError):
        schema_from_response_format({"type": "xml"})


def test_refs_into_defs_are_inlined():
    schema = {"type": "object", "properties": {"p": {"$ref": "#/$defs/P"}}, "required": ["p"],
              "additionalProperties": False, "$defs": {"P": {"type": "integer"}}}
    assert can_finish(_state(schema, b'{"p":12}'))
    assert _state(schema, b'{"p":"') is None


def test_byte_level_inverse_undoes_the_tokenizers_byte_table():
    from axon_llm.constrained import _byte_level_inverse
    from axon_llm.tokenizer import _bytes_to_unicode

    assert _byte_level_inverse() == {ch: b for b, ch in _bytes_to_unicode().items()}
