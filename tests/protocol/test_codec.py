"""The codec against DESIGN.md section 2: round trips, a table of malformed bodies, fuzzing,
and conformance with the contract as an independent client (plain msgpack) sees it."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spear_actors.errors import LocalProtocolError, RemoteProtocolError
from spear_actors.protocol import (
    PROTOCOL_VERSION,
    AuthRequest,
    AuthResponse,
    ConnectionClose,
    Error,
    ExecuteRequest,
    ExecuteResponse,
    Heartbeat,
    MessageType,
    Payload,
    Signal,
    SpearMessage,
    StreamData,
    decode,
    decode_payload,
    encode,
    encode_payload,
    make_message,
    pack,
)
from spear_actors.protocol.codec import pack_execute_request, pack_execute_response

U64 = (1 << 64) - 1
FUZZ = settings(max_examples=100, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])
ROUND_TRIP = settings(max_examples=150, deadline=None,
                      suppress_health_check=[HealthCheck.too_slow])

SAMPLES: list[Payload] = [
    AuthRequest("inst-1", "s3cret-token-0123", "spear-actors/0.1", "process", {"k": "v"}),
    AuthRequest("inst-1", "s3cret-token-0123", "c/1", "python"),
    AuthResponse(True, "ab" * 16, None, "spear-actors/0.1", ("heartbeat", "execute"), 1.0),
    AuthResponse(False, None, "authentication failed", "spear-actors/0.1", (), 0.25),
    ExecuteRequest("echo", b"\x00\xff payload", 1.7e9),
    ExecuteRequest("", b"", None),
    ExecuteResponse(True, b"hi", None),
    ExecuteResponse(False, b"", "ValueError: boom"),
    Signal("stop", "operator"),
    Signal("drain"),
    Heartbeat(7),
    Heartbeat(U64, {"cpu": 1.5, "rss": 10, "name": "x", "ok": True, "none": None}),
    Heartbeat(0, {}),
    Error("bad_message", "not valid msgpack"),
    Error("internal"),
    StreamData(1, 2, b"chunk", True),
    StreamData(U64, 0, b"", False),
    ConnectionClose("superseded"),
    ConnectionClose(),
]


def _sample_id(p: Payload) -> str:
    return type(p).__name__


def test_samples_cover_every_message_type() -> None:
    assert {p.TYPE for p in SAMPLES} == set(MessageType)


# --- round trips ----------------------------------------------------------------------------

@pytest.mark.parametrize("payload", SAMPLES, ids=_sample_id)
@pytest.mark.parametrize("request_id", [0, 1, U64])
def test_round_trip(payload: Payload, request_id: int) -> None:
    raw_payload = encode_payload(payload)
    assert decode_payload(SpearMessage(payload.TYPE, 0, 0.0, raw_payload)) == payload

    message = make_message(payload, request_id, 1_700_000_000.25)
    assert message.message_type is payload.TYPE
    assert message.version == PROTOCOL_VERSION
    body = encode(message)
    assert body == pack(payload, request_id, 1_700_000_000.25)
    decoded = decode(body)
    assert decoded == message
    assert decode_payload(decoded) == payload


def test_make_message_accepts_int_timestamp() -> None:
    message = make_message(Heartbeat(1), 3, 5)
    assert message.timestamp == 5.0 and isinstance(message.timestamp, float)


def test_encode_payload_refuses_non_records() -> None:
    class Fake(Heartbeat):
        pass

    with pytest.raises(LocalProtocolError):
        encode_payload(Fake(1))


@pytest.mark.parametrize("build", [
    lambda: SpearMessage(MessageType.HEARTBEAT, -1, 0.0, b""),
    lambda: SpearMessage(MessageType.HEARTBEAT, U64 + 1, 0.0, b""),
    lambda: SpearMessage(MessageType.HEARTBEAT, 0, math.nan, b""),
    lambda: SpearMessage(MessageType.HEARTBEAT, 0, 1, b""),
    lambda: SpearMessage(6, 0, 0.0, b""),  # type: ignore[arg-type]
    lambda: SpearMessage(MessageType.HEARTBEAT, 0, 0.0, "x"),  # type: ignore[arg-type]
    lambda: AuthRequest("i", 12345678, "v", "t"),  # type: ignore[arg-type]
    lambda: AuthRequest("i", "t" * 8, "v", "t", {"a": 1}),  # type: ignore[dict-item]
    lambda: AuthResponse(True, "s", None, "v", (), math.nan),
    lambda: AuthResponse(True, "s", None, "v", (), 0.0),
    lambda: ExecuteRequest("m", "not bytes"),  # type: ignore[arg-type]
    lambda: Heartbeat(-1),
    lambda: Heartbeat(1, {"nested": {"a": 1}}),
    lambda: StreamData(1, 1, b"", end=1),  # type: ignore[arg-type]
])
def test_records_validate_themselves(build: Callable[[], object]) -> None:
    with pytest.raises(LocalProtocolError):
        build()


# --- malformed bodies -----------------------------------------------------------------------

MISSING = object()
GOOD_PAYLOAD = encode_payload(Heartbeat(1))


def envelope(**overrides: Any) -> dict[Any, Any]:
    """A valid contract envelope (as a plain map) with some keys replaced or removed."""
    env: dict[Any, Any] = {"message_type": 6, "request_id": 1, "timestamp": 1.5,
                           "payload": GOOD_PAYLOAD, "version": 1}
    for key, value in overrides.items():
        if value is MISSING:
            del env[key]
        else:
            env[key] = value
    return env


def packb(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)  # type: ignore[no-any-return]


def body(**overrides: Any) -> bytes:
    return packb(envelope(**overrides))


GOOD = body()
BAD, VERSION, LARGE = "bad_message", "unsupported_version", "too_large"

MALFORMED: list[tuple[str, bytes, str]] = [
    ("empty", b"", BAD),
    ("not-msgpack-c1", b"\xc1", BAD),
    ("not-msgpack-text", b"hello, world", BAD),
    ("trailing-bytes", GOOD + b"\x00", BAD),
    ("truncated-by-one", GOOD[:-1], BAD),
    ("truncated-half", GOOD[: len(GOOD) // 2], BAD),
    ("truncated-header", b"\x85", BAD),
    ("list", packb([6, 1, 1.5, GOOD_PAYLOAD, 1]), BAD),
    ("int", packb(6), BAD),
    ("str", packb("message"), BAD),
    ("bin", packb(GOOD), BAD),
    ("nil", packb(None), BAD),
    ("empty-map", packb({}), BAD),
    *[(f"missing-{key}", body(**{key: MISSING}), BAD)
      for key in ("message_type", "request_id", "timestamp", "payload", "version")],
    ("extra-key", packb({**envelope(), "extra": 1}), BAD),
    ("bin-key", packb({**envelope(version=MISSING), b"version": 1}), BAD),
    ("int-key", packb({**envelope(), 7: 1}), BAD),
    ("message_type-str", body(message_type="6"), BAD),
    ("message_type-bool", body(message_type=True), BAD),
    ("message_type-float", body(message_type=6.0), BAD),
    ("message_type-nil", body(message_type=None), BAD),
    ("request_id-negative", body(request_id=-1), BAD),
    ("request_id-str", body(request_id="1"), BAD),
    ("request_id-float", body(request_id=1.0), BAD),
    ("request_id-bool", body(request_id=True), BAD),
    ("timestamp-str", body(timestamp="now"), BAD),
    ("timestamp-nil", body(timestamp=None), BAD),
    ("timestamp-nan", body(timestamp=math.nan), BAD),
    ("timestamp-inf", body(timestamp=math.inf), BAD),
    ("timestamp--inf", body(timestamp=-math.inf), BAD),
    ("timestamp-bool", body(timestamp=True), BAD),
    ("payload-str", packb(envelope(payload="not bin")), BAD),
    ("payload-nil", body(payload=None), BAD),
    ("payload-map", body(payload={"sequence": 1}), BAD),
    ("version-str", body(version="1"), BAD),
    ("version-bool", body(version=True), BAD),
    ("version-float", body(version=1.0), BAD),
    ("version-nil", body(version=None), BAD),
    ("version-list", body(version=[1]), BAD),
    ("version-map", body(version={"v": 1}), BAD),
    ("message_type-0", body(message_type=0), BAD),
    ("message_type-10", body(message_type=10), BAD),
    ("message_type-255", body(message_type=255), BAD),
    ("message_type--1", body(message_type=-1), BAD),
    ("message_type-u64", body(message_type=U64), BAD),
    ("version-2", body(version=2), VERSION),
    ("version-0", body(version=0), VERSION),
    ("version-u64", body(version=U64), VERSION),
    ("ext-at-top", packb(msgpack.ExtType(5, b"x")), BAD),
    ("ext-timestamp", body(timestamp=msgpack.ExtType(5, b"\x00" * 8)), BAD),
    ("ext-payload", body(payload=msgpack.ExtType(1, GOOD_PAYLOAD)), BAD),
    ("ext-msgpack-timestamp", body(timestamp=msgpack.Timestamp(1, 0)), BAD),
    ("ext-bad-msgpack-timestamp", body(timestamp=msgpack.ExtType(5, b"abc")).replace(
        b"\xc7\x03\x05abc", b"\xc7\x03\xffabc"), BAD),
    ("invalid-utf8-key", GOOD.replace(b"version", b"versio\xff"), BAD),
    ("invalid-utf8-value", body(message_type="\u00e9\u00e9").replace(
        "\u00e9\u00e9".encode(), b"\xff\xfe\xfd\xfc"), BAD),
    ("deep-nesting", b"\x91" * 100_000 + b"\x00", BAD),
    ("huge-array-header", b"\xdd\xff\xff\xff\xff", BAD),
    ("huge-map-header", b"\xdf\xff\xff\xff\xff", BAD),
    ("huge-bin-header", b"\xc6\xff\xff\xff\xff", BAD),
]


@pytest.mark.parametrize(("raw", "code"), [(raw, code) for _, raw, code in MALFORMED],
                         ids=[name for name, _, _ in MALFORMED])
def test_malformed_body(raw: bytes, code: str) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        decode(raw)
    assert info.value.code == code


def test_good_body_of_the_table_decodes() -> None:
    assert decode(GOOD) == SpearMessage(MessageType.HEARTBEAT, 1, 1.5, GOOD_PAYLOAD)


def test_oversize_is_too_large() -> None:
    assert decode(GOOD, max_size=len(GOOD)).request_id == 1
    with pytest.raises(RemoteProtocolError) as info:
        decode(GOOD, max_size=len(GOOD) - 1)
    assert info.value.code == LARGE


def test_oversize_is_checked_before_parsing() -> None:
    with pytest.raises(RemoteProtocolError) as info:
        decode(b"\xc1" * 65, max_size=64)
    assert info.value.code == LARGE


def test_decode_accepts_bytearray_and_memoryview() -> None:
    assert decode(bytearray(GOOD)) == decode(GOOD)  # type: ignore[arg-type]
    assert decode(memoryview(GOOD)) == decode(GOOD)  # type: ignore[arg-type]


def test_decode_refuses_non_bytes() -> None:
    with pytest.raises(RemoteProtocolError):
        decode("a str")  # type: ignore[arg-type]


# --- payload-level errors -------------------------------------------------------------------

VALID_PAYLOAD_MAPS: dict[MessageType, dict[str, Any]] = {
    MessageType.AUTH_REQUEST: {"instance_id": "inst-1", "token": "s3cret-token",
                               "client_version": "1", "client_type": "process",
                               "extra_params": {"a": "b"}},
    MessageType.AUTH_RESPONSE: {"success": True, "session_id": "ab" * 16,
                                "error_message": None, "server_version": "s/1",
                                "supported_features": ["heartbeat"],
                                "heartbeat_interval": 1.0},
    MessageType.EXECUTE_REQUEST: {"method": "echo", "data": b"x", "deadline": None},
    MessageType.EXECUTE_RESPONSE: {"ok": True, "data": b"x", "error": None},
    MessageType.SIGNAL: {"signal": "stop", "reason": "operator"},
    MessageType.HEARTBEAT: {"sequence": 1, "stats": {"cpu": 0.5}},
    MessageType.ERROR: {"code": "bad_message", "message": "nope"},
    MessageType.STREAM_DATA: {"stream_id": 1, "seq": 0, "data": b"x", "end": False},
    MessageType.CONNECTION_CLOSE: {"reason": "bye"},
}

OPTIONAL_FIELDS = {(MessageType.HEARTBEAT, "stats")}

WRONG_TYPES: list[tuple[MessageType, str, Any]] = [
    (MessageType.AUTH_REQUEST, "token", 12345678),
    (MessageType.AUTH_REQUEST, "token", b"s3cret-token"),
    (MessageType.AUTH_REQUEST, "instance_id", None),
    (MessageType.AUTH_REQUEST, "client_version", 1),
    (MessageType.AUTH_REQUEST, "client_type", ["process"]),
    (MessageType.AUTH_REQUEST, "extra_params", {"a": 1}),
    (MessageType.AUTH_REQUEST, "extra_params", {"a": None}),
    (MessageType.AUTH_REQUEST, "extra_params", {"a": {"b": "c"}}),
    (MessageType.AUTH_REQUEST, "extra_params", ["a", "b"]),
    (MessageType.AUTH_REQUEST, "extra_params", None),
    (MessageType.AUTH_RESPONSE, "heartbeat_interval", math.nan),
    (MessageType.AUTH_RESPONSE, "heartbeat_interval", math.inf),
    (MessageType.AUTH_RESPONSE, "heartbeat_interval", 0.0),
    (MessageType.AUTH_RESPONSE, "heartbeat_interval", -1.0),
    (MessageType.AUTH_RESPONSE, "heartbeat_interval", "1.0"),
    (MessageType.AUTH_RESPONSE, "heartbeat_interval", None),
    (MessageType.AUTH_RESPONSE, "success", 1),
    (MessageType.AUTH_RESPONSE, "success", None),
    (MessageType.AUTH_RESPONSE, "session_id", 5),
    (MessageType.AUTH_RESPONSE, "error_message", b"x"),
    (MessageType.AUTH_RESPONSE, "supported_features", "heartbeat"),
    (MessageType.AUTH_RESPONSE, "supported_features", [1]),
    (MessageType.AUTH_RESPONSE, "server_version", None),
    (MessageType.EXECUTE_REQUEST, "method", None),
    (MessageType.EXECUTE_REQUEST, "data", "not bin"),
    (MessageType.EXECUTE_REQUEST, "deadline", "soon"),
    (MessageType.EXECUTE_REQUEST, "deadline", math.inf),
    (MessageType.EXECUTE_REQUEST, "deadline", True),
    (MessageType.EXECUTE_RESPONSE, "ok", "yes"),
    (MessageType.EXECUTE_RESPONSE, "data", None),
    (MessageType.EXECUTE_RESPONSE, "error", 3),
    (MessageType.SIGNAL, "signal", 1),
    (MessageType.SIGNAL, "reason", None),
    (MessageType.HEARTBEAT, "sequence", -1),
    (MessageType.HEARTBEAT, "sequence", "1"),
    (MessageType.HEARTBEAT, "sequence", 1.0),
    (MessageType.HEARTBEAT, "sequence", True),
    (MessageType.HEARTBEAT, "stats", {"a": {"nested": 1}}),
    (MessageType.HEARTBEAT, "stats", {"a": [1]}),
    (MessageType.HEARTBEAT, "stats", {"a": b"bin"}),
    (MessageType.HEARTBEAT, "stats", [1, 2]),
    (MessageType.HEARTBEAT, "stats", "cpu=1"),
    (MessageType.ERROR, "code", 1),
    (MessageType.ERROR, "message", None),
    (MessageType.STREAM_DATA, "stream_id", "x"),
    (MessageType.STREAM_DATA, "seq", -1),
    (MessageType.STREAM_DATA, "data", "not bin"),
    (MessageType.STREAM_DATA, "end", "no"),
    (MessageType.STREAM_DATA, "end", 0),
    (MessageType.CONNECTION_CLOSE, "reason", None),
    (MessageType.CONNECTION_CLOSE, "reason", 1),
]


def _payload_cases() -> list[Any]:
    cases = []
    for mt, good in VALID_PAYLOAD_MAPS.items():
        for key in good:
            if (mt, key) not in OPTIONAL_FIELDS:
                bad = {k: v for k, v in good.items() if k != key}
                cases.append(pytest.param(mt, packb(bad), id=f"{mt.name}-missing-{key}"))
        cases.append(pytest.param(mt, packb({**good, "zzz": 1}), id=f"{mt.name}-extra-key"))
        cases.append(pytest.param(mt, packb([*good.values()]), id=f"{mt.name}-list"))
        cases.append(pytest.param(mt, packb("x"), id=f"{mt.name}-str"))
        cases.append(pytest.param(mt, b"\xc1", id=f"{mt.name}-not-msgpack"))
        cases.append(pytest.param(mt, b"", id=f"{mt.name}-empty"))
        cases.append(pytest.param(mt, packb(good)[:-1], id=f"{mt.name}-truncated"))
        cases.append(pytest.param(mt, packb({**good, 1: 1}), id=f"{mt.name}-int-key"))
        key = next(iter(good))
        cases.append(pytest.param(mt, packb({**good, key: msgpack.ExtType(3, b"x")}),
                                  id=f"{mt.name}-ext"))
    for mt, key, value in WRONG_TYPES:
        raw = packb({**VALID_PAYLOAD_MAPS[mt], key: value})
        cases.append(pytest.param(mt, raw, id=f"{mt.name}-{key}-{value!r}"))
    raw = packb(VALID_PAYLOAD_MAPS[MessageType.AUTH_REQUEST]).replace(
        b"inst-1", b"inst-\xff")
    cases.append(pytest.param(MessageType.AUTH_REQUEST, raw, id="AUTH_REQUEST-invalid-utf8"))
    return cases


@pytest.mark.parametrize("mt", list(VALID_PAYLOAD_MAPS))
def test_valid_payload_maps_decode(mt: MessageType) -> None:
    payload = decode_payload(SpearMessage(mt, 1, 0.0, packb(VALID_PAYLOAD_MAPS[mt])))
    assert payload.TYPE is mt


@pytest.mark.parametrize(("mt", "raw"), _payload_cases())
def test_malformed_payload(mt: MessageType, raw: bytes) -> None:
    message = decode(packb(envelope(message_type=int(mt), payload=raw)))
    with pytest.raises(RemoteProtocolError) as info:
        decode_payload(message)
    assert info.value.code == BAD


def test_payload_over_the_limit_is_refused() -> None:
    message = make_message(ExecuteResponse(True, b"x" * 1000), 1, 0.0)
    with pytest.raises(RemoteProtocolError):
        decode_payload(message, max_size=100)


def test_heartbeat_stats_are_optional() -> None:
    message = SpearMessage(MessageType.HEARTBEAT, 1, 0.0, packb({"sequence": 3}))
    assert decode_payload(message) == Heartbeat(3)


# --- fuzzing --------------------------------------------------------------------------------

def _decode_all(raw: bytes) -> None:
    """decode, then decode_payload; only RemoteProtocolError may escape."""
    try:
        message = decode(raw)
    except RemoteProtocolError as exc:
        assert exc.code in {BAD, VERSION, LARGE}
        return
    try:
        decode_payload(message)
    except RemoteProtocolError as exc:
        assert exc.code == BAD


scalars = (st.none() | st.booleans() | st.integers(-(1 << 63), U64)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=20)
           | st.binary(max_size=20))
structures = st.recursive(
    scalars,
    lambda children: (st.lists(children, max_size=5)
                      | st.dictionaries(st.text(max_size=12), children, max_size=5)),
    max_leaves=20)


def _field_values(names: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    # maps that have the right keys (sometimes one missing) but arbitrary values
    return st.fixed_dictionaries({}, optional={name: structures for name in names})


payload_like = st.one_of(*[_field_values([*fields, "extra"]) for fields in
                           VALID_PAYLOAD_MAPS.values()]) | structures
envelope_like = st.fixed_dictionaries({}, optional={
    "message_type": st.integers(0, 11) | structures,
    "request_id": st.integers(-1, U64) | structures,
    "timestamp": st.floats() | st.integers(-(1 << 63), U64) | structures,
    "payload": payload_like.map(packb) | st.binary(max_size=40) | structures,
    "version": st.integers(0, 3) | structures,
    "extra": structures,
})


@settings(FUZZ, max_examples=500)
@given(st.binary(max_size=200))
def test_fuzz_arbitrary_bytes(raw: bytes) -> None:
    _decode_all(raw)


@FUZZ
@given(structures)
def test_fuzz_arbitrary_msgpack(obj: Any) -> None:
    _decode_all(packb(obj))


@FUZZ
@given(envelope_like)
def test_fuzz_envelope_shaped_maps(obj: dict[str, Any]) -> None:
    _decode_all(packb(obj))


@FUZZ
@given(st.sampled_from(SAMPLES), st.data())
def test_fuzz_mutated_frames(payload: Payload, data: st.DataObject) -> None:
    raw = bytearray(pack(payload, 7, 1.5))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    _decode_all(bytes(raw))


# valid records of every type
texts = st.text(max_size=30)
u64 = st.integers(0, U64)
finite = st.floats(allow_nan=False, allow_infinity=False)
stat_values = (st.none() | st.booleans() | st.integers(-(1 << 63), U64) | finite | texts)

payloads: st.SearchStrategy[Payload] = st.one_of(
    st.builds(AuthRequest, texts, texts, texts, texts,
              st.dictionaries(texts, texts, max_size=5)),
    st.builds(AuthResponse, st.booleans(), st.none() | texts, st.none() | texts, texts,
              st.lists(texts, max_size=5).map(tuple),
              st.floats(min_value=1e-6, max_value=1e6)),
    st.builds(ExecuteRequest, texts, st.binary(max_size=100), st.none() | finite),
    st.builds(ExecuteResponse, st.booleans(), st.binary(max_size=100), st.none() | texts),
    st.builds(Signal, st.sampled_from(["stop", "drain"]) | texts, texts),
    st.builds(Heartbeat, u64, st.none() | st.dictionaries(texts, stat_values, max_size=5)),
    st.builds(Error, texts, texts),
    st.builds(StreamData, u64, u64, st.binary(max_size=100), st.booleans()),
    st.builds(ConnectionClose, texts),
)


@ROUND_TRIP
@given(payloads, u64, finite)
def test_round_trip_arbitrary_valid_messages(payload: Payload, request_id: int,
                                             timestamp: float) -> None:
    message = decode(pack(payload, request_id, timestamp))
    assert message == make_message(payload, request_id, timestamp)
    assert decode_payload(message) == payload


# --- contract conformance -------------------------------------------------------------------

NONE = type(None)
ENVELOPE_TYPES: dict[str, type] = {"message_type": int, "request_id": int,
                                   "timestamp": float, "payload": bytes, "version": int}
# DESIGN.md section 2, transcribed independently of the codec's schema
CONTRACT: dict[MessageType, dict[str, tuple[type, ...]]] = {
    MessageType.AUTH_REQUEST: {"instance_id": (str,), "token": (str,),
                               "client_version": (str,), "client_type": (str,),
                               "extra_params": (dict,)},
    MessageType.AUTH_RESPONSE: {"success": (bool,), "session_id": (str, NONE),
                                "error_message": (str, NONE), "server_version": (str,),
                                "supported_features": (list,),
                                "heartbeat_interval": (float,)},
    MessageType.EXECUTE_REQUEST: {"method": (str,), "data": (bytes,),
                                  "deadline": (float, NONE)},
    MessageType.EXECUTE_RESPONSE: {"ok": (bool,), "data": (bytes,), "error": (str, NONE)},
    MessageType.SIGNAL: {"signal": (str,), "reason": (str,)},
    MessageType.HEARTBEAT: {"sequence": (int,)},
    MessageType.ERROR: {"code": (str,), "message": (str,)},
    MessageType.STREAM_DATA: {"stream_id": (int,), "seq": (int,), "data": (bytes,),
                              "end": (bool,)},
    MessageType.CONNECTION_CLOSE: {"reason": (str,)},
}
CONTRACT_OPTIONAL: dict[MessageType, dict[str, tuple[type, ...]]] = {
    MessageType.HEARTBEAT: {"stats": (dict,)},
}
CONTRACT_VALUES = {1: "AUTH_REQUEST", 2: "AUTH_RESPONSE", 3: "EXECUTE_REQUEST",
                   4: "EXECUTE_RESPONSE", 5: "SIGNAL", 6: "HEARTBEAT", 7: "ERROR",
                   8: "STREAM_DATA", 9: "CONNECTION_CLOSE"}
CONTRACT_VALUES_BY_NAME = {name: value for value, name in CONTRACT_VALUES.items()}


def test_message_type_numbers_are_the_contracts() -> None:
    assert {int(mt): mt.name for mt in MessageType} == CONTRACT_VALUES


def _plain(raw: bytes) -> Any:
    return msgpack.unpackb(raw, raw=False)


@pytest.mark.parametrize("payload", [*SAMPLES,
                                     AuthResponse(True, "s" * 32, None, "v", (), 2)],
                         ids=_sample_id)
def test_our_bytes_are_the_contract_map(payload: Payload) -> None:
    env = _plain(pack(payload, 42, 1_700_000_000.5))
    assert set(env) == set(ENVELOPE_TYPES)
    for key, kind in ENVELOPE_TYPES.items():
        assert type(env[key]) is kind, key
    assert env["message_type"] == CONTRACT_VALUES_BY_NAME[type(payload).TYPE.name]
    assert (env["request_id"], env["timestamp"], env["version"]) == (42, 1_700_000_000.5, 1)

    fields = _plain(env["payload"])
    assert type(fields) is dict
    required = CONTRACT[payload.TYPE]
    optional = CONTRACT_OPTIONAL.get(payload.TYPE, {})
    assert set(required) <= set(fields) <= set(required) | set(optional)
    for key, value in fields.items():
        kinds = {**required, **optional}[key]
        assert type(value) in kinds, (key, value)
    for key in ("extra_params", "stats"):
        if key in fields:
            assert all(type(k) is str for k in fields[key])
    if "supported_features" in fields:
        assert all(type(f) is str for f in fields["supported_features"])


def _independent_client_frame(message_type: int, payload: dict[str, Any],
                              **envelope_fields: Any) -> bytes:
    """What a client written from DESIGN.md alone would send (plain msgpack, bin type)."""
    env = {"message_type": message_type, "request_id": 9, "timestamp": 1_700_000_000.0,
           "payload": msgpack.packb(payload, use_bin_type=True), "version": 1}
    env.update(envelope_fields)
    return msgpack.packb(env, use_bin_type=True)  # type: ignore[no-any-return]


HAND_BUILT: list[tuple[int, dict[str, Any], Payload]] = [
    (1, {"instance_id": "i-1", "token": "t" * 64, "client_version": "go/1.0",
         "client_type": "go", "extra_params": {}},
     AuthRequest("i-1", "t" * 64, "go/1.0", "go", {})),
    (2, {"success": False, "session_id": None, "error_message": "authentication failed",
         "server_version": "x", "supported_features": [], "heartbeat_interval": 2},
     AuthResponse(False, None, "authentication failed", "x", (), 2.0)),
    (3, {"method": "m", "data": b"\x01", "deadline": 10},
     ExecuteRequest("m", b"\x01", 10.0)),
    (4, {"ok": True, "data": b"out", "error": None}, ExecuteResponse(True, b"out")),
    (4, {"ok": True, "data": b"", "error": None, "processing_time": 2},  # int for float
     ExecuteResponse(True, b"", None, 2.0)),
    (5, {"signal": "drain", "reason": ""}, Signal("drain")),
    (6, {"sequence": 12, "stats": {"rss": 1 << 40, "cpu": 3.5, "tag": "a", "x": None}},
     Heartbeat(12, {"rss": 1 << 40, "cpu": 3.5, "tag": "a", "x": None})),
    (6, {"sequence": 13}, Heartbeat(13)),
    (7, {"code": "timeout", "message": "late"}, Error("timeout", "late")),
    (8, {"stream_id": 4, "seq": 5, "data": b"", "end": True}, StreamData(4, 5, b"", True)),
    (9, {"reason": "bye"}, ConnectionClose("bye")),
]


@pytest.mark.parametrize(("mt", "fields", "expected"), HAND_BUILT,
                         ids=[f"{CONTRACT_VALUES[mt]}-{i}"
                              for i, (mt, _, _) in enumerate(HAND_BUILT)])
def test_independent_client_frames_decode(mt: int, fields: dict[str, Any],
                                          expected: Payload) -> None:
    message = decode(_independent_client_frame(mt, fields))
    assert message.message_type == mt
    assert (message.request_id, message.timestamp, message.version) == (9, 1.7e9, 1)
    payload = decode_payload(message)
    assert payload == expected
    for name in ("heartbeat_interval", "deadline"):
        if hasattr(payload, name):
            assert isinstance(getattr(payload, name), float)


def test_int_timestamp_is_accepted_as_float() -> None:
    message = decode(_independent_client_frame(6, {"sequence": 1}, timestamp=5))
    assert message.timestamp == 5.0 and type(message.timestamp) is float


def test_key_order_does_not_matter() -> None:
    env = dict(reversed(list(envelope().items())))
    assert decode(packb(env)) == decode(GOOD)


def test_payload_packed_as_str_by_an_old_client_is_refused() -> None:
    # a client packing without use_bin_type sends the payload as str: refused, not guessed
    raw = msgpack.packb(envelope(), use_bin_type=False)
    with pytest.raises(RemoteProtocolError):
        decode(raw)


# --- fast paths -----------------------------------------------------------------------------

@ROUND_TRIP
@given(u64, texts, st.binary(max_size=50), st.none() | finite, finite)
def test_pack_execute_request_fast_path_is_byte_identical(
        request_id: int, method: str, data: bytes, deadline: float | None,
        timestamp: float) -> None:
    fast = pack_execute_request(request_id, method, data, deadline, timestamp)
    assert fast == pack(ExecuteRequest(method, data, deadline), request_id, timestamp)


@ROUND_TRIP
@given(u64, st.booleans(), st.binary(max_size=50), st.none() | texts, finite,
       st.none() | st.floats(0, 1e6))
def test_pack_execute_response_fast_path_is_byte_identical(
        request_id: int, ok: bool, data: bytes, error: str | None, timestamp: float,
        took: float | None) -> None:
    fast = pack_execute_response(request_id, ok, data, error, timestamp, took)
    assert fast == pack(ExecuteResponse(ok, data, error, took), request_id, timestamp)
