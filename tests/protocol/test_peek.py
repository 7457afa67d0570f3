"""peek_execute_response (the pump's fast path) agrees with the strict decoder: it never
raises, and whatever it accepts the strict path decodes to the same values."""

from __future__ import annotations

import msgpack
from hypothesis import given, settings
from hypothesis import strategies as st

from spear_actors.errors import RemoteProtocolError
from spear_actors.protocol.codec import (
    decode,
    decode_payload,
    pack_execute_request,
    pack_execute_response,
    peek_execute_response,
)
from spear_actors.protocol.types import ExecuteResponse, MessageType


def _strict(body: bytes) -> tuple[int, bool, bytes, str | None, float | None] | None:
    try:
        message = decode(body)
        payload = decode_payload(message)
    except RemoteProtocolError:
        return None
    if message.message_type is not MessageType.EXECUTE_RESPONSE:
        return None
    assert isinstance(payload, ExecuteResponse)
    return message.request_id, payload.ok, payload.data, payload.error, payload.processing_time


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 2**64 - 1), st.booleans(), st.binary(max_size=64),
       st.none() | st.text(max_size=16), st.floats(allow_nan=False, allow_infinity=False),
       st.none() | st.floats(0, 1e6))
def test_agrees_on_valid_responses(request_id: int, ok: bool, data: bytes,
                                   error: str | None, timestamp: float,
                                   took: float | None) -> None:
    body = pack_execute_response(request_id, ok, data, error, timestamp, took)
    assert peek_execute_response(body) == _strict(body) == (request_id, ok, data, error, took)


@given(st.sampled_from([0, 3, 2.5, -1, -0.5, float("nan"), float("inf"), "1", None, True]))
def test_processing_time_is_checked_like_the_strict_path(took: object) -> None:
    """Ints are accepted for the float (as elsewhere on the wire); negative, non-finite or
    non-numbers are refused by both paths (the strict one then answers bad_message)."""
    fields = {"ok": True, "data": b"", "error": None, "processing_time": took}
    body = msgpack.packb({"message_type": 4, "request_id": 1, "timestamp": 1.0, "version": 1,
                          "payload": msgpack.packb(fields, use_bin_type=True)},
                         use_bin_type=True)
    peeked = peek_execute_response(body)
    assert peeked == _strict(body)
    valid = type(took) in (int, float) and 0 <= took < float("inf")  # type: ignore[operator]
    assert (peeked is not None) == valid
    if peeked is not None:
        assert peeked[4] == float(took) and type(peeked[4]) is float  # type: ignore[arg-type]


_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.floats()
    | st.text(max_size=8) | st.binary(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=6),
    max_leaves=12)


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(st.sampled_from(["message_type", "request_id", "timestamp",
                                        "payload", "version", "x"]), _values, max_size=6),
       st.dictionaries(st.sampled_from(["ok", "data", "error", "processing_time", "y"]),
                       _values, max_size=5))
def test_never_accepts_what_the_strict_path_refuses(envelope: dict[str, object],
                                                    fields: dict[str, object]) -> None:
    if "payload" in envelope and isinstance(envelope["payload"], bytes):
        envelope["payload"] = msgpack.packb(fields, use_bin_type=True)
    body = msgpack.packb(envelope, use_bin_type=True)
    peeked = peek_execute_response(body)
    if peeked is not None:
        assert peeked == _strict(body)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_garbage_is_refused_quietly(body: bytes) -> None:
    assert peek_execute_response(body) in (None, _strict(body))


def test_other_types_and_limits_are_left_to_the_strict_path() -> None:
    assert peek_execute_response(pack_execute_request(1, "m", b"", None, 1.0)) is None
    body = pack_execute_response(1, True, b"x" * 100, None, 1.0)
    assert peek_execute_response(body, max_size=len(body) - 1) is None
