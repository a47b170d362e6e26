"""The one JSON loader for outside input: bounded size, depth and number length, no duplicate
keys, finite numbers; every failure a ProtocolError with the caller's code (never a bare
ValueError or RecursionError)."""

from __future__ import annotations

import json

import pytest

from streamcap.core.errors import ProtocolError
from streamcap.outputs import jsonsafe
from streamcap.outputs.jsonsafe import JsonLimits, nesting_depth


def _refused(text, limits=JsonLimits(), code="bad_json") -> str:
    with pytest.raises(ProtocolError) as err:
        jsonsafe.loads(text, limits, code=code)
    assert err.value.code == code and err.value.detail
    return err.value.detail


def test_an_ordinary_document_loads_as_json_would():
    text = json.dumps({"frames": ["a[b{c", "d"], "fps": 10.5, "n": -3, "ok": True, "none": None,
                       "nested": {"list": [[1, 2], {"x": "y"}]}})
    assert jsonsafe.loads(text) == json.loads(text)
    assert jsonsafe.loads(text.encode()) == json.loads(text)


@pytest.mark.parametrize("text", ["[" * 100_000 + "]" * 100_000, '{"a":' * 5000 + "1" + "}" * 5000,
                                  "[" * 100_000])
def test_deep_nesting_is_refused_before_parsing(text):
    assert "nested more than 32 levels" in _refused(text)


def test_brackets_inside_strings_do_not_count_as_nesting():
    text = json.dumps({"s": "[" * 1000 + '\\"{' * 500, "t": ["]]]"]})
    assert nesting_depth(text) == 2
    assert jsonsafe.loads(text)["t"] == ["]]]"]


def test_the_depth_limit_is_exact():
    assert jsonsafe.loads("[" * 32 + "]" * 32, JsonLimits(max_depth=32)) is not None
    _refused("[" * 33 + "]" * 33, JsonLimits(max_depth=32))


@pytest.mark.parametrize("number", ["1" * 5000, "-" + "9" * 4400, "1." + "5" * 200, "1e" + "0" * 100])
def test_overlong_numbers_are_refused_not_a_value_error(number):
    assert "characters; the limit is 64" in _refused('{"v": ' + number + "}")


@pytest.mark.parametrize("text", ['{"v": NaN}', '{"v": Infinity}', '{"v": -Infinity}', '{"v": 1e400}'])
def test_non_finite_numbers_are_refused(text):
    _refused(text)


def test_duplicate_keys_malformed_text_and_non_utf8_bytes_are_refused():
    assert "duplicate key 'a'" in _refused('{"a": 1, "a": 2}')
    assert "malformed JSON" in _refused("{not json")
    assert "not UTF-8" in _refused(b'{"a": "\xff"}')


def test_the_size_limit_counts_utf8_bytes_and_the_callers_code_is_used():
    limits = JsonLimits(max_bytes=100)
    assert jsonsafe.loads('"' + "e" * 90 + '"', limits)
    assert "exceeds the 100-byte limit" in _refused('"' + "é" * 60 + '"', limits, code="bad_message")
    assert "exceeds" in _refused(b'"' + b"x" * 200 + b'"', limits)


def test_a_large_flat_message_is_not_scanned_character_by_character():
    # a 16 MB base64-like string with two brackets: within limits, loads fine
    text = json.dumps({"frames": ["A" * (16 << 20)]})
    assert len(jsonsafe.loads(text)["frames"][0]) == 16 << 20
