"""bencode (media/ng.py): round trips of any value, byte-exact canonical forms, and
hostile input refused with `BencodeError` (never another exception, never unbounded
work): oversized, too deep, truncated, trailing bytes, non-canonical integers, bad
lengths, non-string or duplicate keys."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vivait_sip.media.ng import MAX_DEPTH, BencodeError, bdecode, bencode

values = st.recursive(
    st.binary(max_size=64) | st.integers(min_value=-(10**18), max_value=10**18),
    lambda children: st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=12), children, max_size=6),
    max_leaves=40,
)


@given(values)
@settings(max_examples=400, deadline=None)
def test_any_value_round_trips(value: object) -> None:
    data = bencode(value)
    assert bdecode(data) == value
    assert bencode(bdecode(data)) == data  # canonical: one encoding per value


@given(st.binary(max_size=300))
@settings(max_examples=1500, deadline=None)
def test_arbitrary_bytes_decode_or_fail_cleanly(data: bytes) -> None:
    try:
        value = bdecode(data)
    except BencodeError:
        return
    assert bencode(value) == data or _sorted_differently(data)


def _sorted_differently(data: bytes) -> bool:
    """Unsorted dict keys are accepted (rtpengine does not sort); they re-encode sorted."""
    return b"d" in data


@given(values, st.integers(min_value=0, max_value=400))
@settings(max_examples=300, deadline=None)
def test_every_truncation_is_refused(value: object, cut: int) -> None:
    data = bencode(value)
    if cut >= len(data):
        return
    prefix = data[:cut]
    try:
        decoded = bdecode(prefix)
    except BencodeError:
        return
    # A prefix can only decode when it is itself a whole value (an integer's digits cut
    # short are not: the terminator is missing).
    assert bencode(decoded) == prefix


def test_known_encodings() -> None:
    assert bencode({"command": "ping"}) == b"d7:command4:pinge"
    assert bencode({"b": 1, "a": [b"x", -2]}) == b"d1:al1:xi-2ee1:bi1ee"
    assert bencode("ñ") == b"2:\xc3\xb1"
    assert bencode(()) == b"le" and bencode({}) == b"de" and bencode(0) == b"i0e"
    assert bdecode(b"d6:result4:ponge") == {"result": b"pong"}
    assert bdecode(b"d1:bi1e1:ai2ee") == {"b": 1, "a": 2}  # rtpengine's own order is accepted


@pytest.mark.parametrize(
    "data",
    [
        b"", b"i", b"ie", b"i-e", b"i03e", b"i-0e", b"i1", b"i" + b"9" * 20 + b"e", b"i1.5e", b"i+1e",
        b"3:ab", b"-1:a", b"01:a", b"99999999999999:a", b"1a", b":", b"l", b"li1e", b"d", b"d1:a",
        b"di1ei2ee", b"dl1:ae1:be", b"d1:ai1e1:ai2ee", b"d2:\xff\xfei1ee", b"i1ei2e", b"le ", b"x", b"\x00",
    ],
)
def test_hostile_input_is_refused(data: bytes) -> None:
    with pytest.raises(BencodeError):
        bdecode(data)


def test_nesting_and_size_are_bounded() -> None:
    deep = b"l" * (MAX_DEPTH + 1) + b"e" * (MAX_DEPTH + 1)
    with pytest.raises(BencodeError, match="nested deeper"):
        bdecode(deep)
    ok = b"l" * MAX_DEPTH + b"e" * MAX_DEPTH
    assert bdecode(ok) is not None
    with pytest.raises(BencodeError, match="nested deeper"):
        bdecode(b"d1:a" * 100_000 + b"i1e" + b"e" * 100_000)  # no recursion error, no slowness
    with pytest.raises(BencodeError, match="over the"):
        bdecode(b"5:hello", max_size=4)
    with pytest.raises(BencodeError, match="nested too deeply"):
        bencode([[[[1]]]], max_depth=3)


def test_values_bencode_has_no_form_for_are_refused() -> None:
    for value in (True, 1.5, None, {1: b"x"}, {"a": 1, b"a": 2}, object()):
        with pytest.raises(BencodeError):
            bencode(value)
