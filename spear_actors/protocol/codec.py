"""Strict, bounded msgpack codec for SpearMessages and their payloads (sans-IO).

``decode`` is the single gate for untrusted bytes: whatever it is given, it returns a valid
:class:`SpearMessage` or raises :class:`RemoteProtocolError` whose ``code`` is the wire ERROR
code (``too_large``, ``unsupported_version`` or ``bad_message``). It never raises anything else.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NoReturn

import msgpack

from ..errors import LocalProtocolError, RemoteProtocolError
from .types import (
    MAX_REQUEST_ID,
    PROTOCOL_VERSION,
    AuthRequest,
    AuthResponse,
    ConnectionClose,
    Error,
    ErrorCode,
    ExecuteRequest,
    ExecuteResponse,
    Heartbeat,
    MessageType,
    Payload,
    Signal,
    SpearMessage,
    StreamData,
)

__all__ = [
    "DEFAULT_MAX_SIZE",
    "SUPPORTED_VERSIONS",
    "decode",
    "decode_payload",
    "encode",
    "encode_payload",
    "make_message",
    "pack",
    "pack_execute_request",
    "pack_execute_response",
    "peek_execute_response",
]

DEFAULT_MAX_SIZE = 16 << 20
SUPPORTED_VERSIONS = frozenset({PROTOCOL_VERSION})
_ENVELOPE_KEYS = frozenset({"message_type", "request_id", "timestamp", "payload", "version"})
_MAX_CONTAINER = 4096  # entries in any map or array inside a payload


def _packb(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)  # type: ignore[no-any-return]


def _bad(what: str, code: ErrorCode = ErrorCode.BAD_MESSAGE) -> NoReturn:
    raise RemoteProtocolError(what, code.value)


def _no_ext(code: int, data: bytes) -> NoReturn:
    _bad(f"msgpack extension type {code} is not allowed")


def _unpack(data: bytes, limit: int) -> Any:
    try:
        return msgpack.unpackb(
            data, raw=False, strict_map_key=True, use_list=True, ext_hook=_no_ext,
            max_str_len=limit, max_bin_len=limit,
            max_array_len=_MAX_CONTAINER, max_map_len=_MAX_CONTAINER, timestamp=0)
    except RemoteProtocolError:
        raise
    except Exception as exc:
        _bad(f"not valid msgpack: {type(exc).__name__}")


# --- field checkers: value -> normalised value, or raise -----------------------------------

Check = Callable[[Any, str], Any]


def _str(v: Any, key: str) -> str:
    if not isinstance(v, str):
        _bad(f"{key} must be a str")
    return v


def _opt_str(v: Any, key: str) -> str | None:
    return None if v is None else _str(v, key)


def _bin(v: Any, key: str) -> bytes:
    if not isinstance(v, bytes):
        _bad(f"{key} must be bin")
    return v


def _bool(v: Any, key: str) -> bool:
    if not isinstance(v, bool):
        _bad(f"{key} must be a bool")
    return v


def _uint64(v: Any, key: str) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= MAX_REQUEST_ID:
        _bad(f"{key} must be an int in 0..2**64-1")
    return v


def _float(v: Any, key: str) -> float:
    # ints are accepted for float fields: clients in other languages may send 1 for 1.0
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        _bad(f"{key} must be a float")
    f = float(v)
    if not math.isfinite(f):
        _bad(f"{key} must be finite")
    return f


def _opt_float(v: Any, key: str) -> float | None:
    return None if v is None else _float(v, key)


def _duration(v: Any, key: str) -> float:
    f = _float(v, key)
    if f < 0:
        _bad(f"{key} must be >= 0")
    return f


def _str_map(v: Any, key: str) -> dict[str, str]:
    if not isinstance(v, dict) or not all(
            isinstance(k, str) and isinstance(x, str) for k, x in v.items()):
        _bad(f"{key} must be a map of str to str")
    return v


def _str_list(v: Any, key: str) -> tuple[str, ...]:
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        _bad(f"{key} must be an array of str")
    return tuple(v)


def _stats(v: Any, key: str) -> dict[str, Any] | None:
    if v is None:
        return None
    if not isinstance(v, dict) or not all(
            isinstance(k, str) and (x is None or isinstance(x, (int, float, str, bool)))
            for k, x in v.items()):
        _bad(f"{key} must be a map of str to scalars")
    return v


# payload schema: message type -> (record class, required fields, optional fields)
_SCHEMA: dict[MessageType, tuple[type[Payload], dict[str, Check], dict[str, Check]]] = {
    MessageType.AUTH_REQUEST: (AuthRequest, {
        "instance_id": _str, "token": _str, "client_version": _str, "client_type": _str,
        "extra_params": _str_map}, {}),
    MessageType.AUTH_RESPONSE: (AuthResponse, {
        "success": _bool, "session_id": _opt_str, "error_message": _opt_str,
        "server_version": _str, "supported_features": _str_list,
        "heartbeat_interval": _float}, {}),
    MessageType.EXECUTE_REQUEST: (ExecuteRequest, {
        "method": _str, "data": _bin, "deadline": _opt_float}, {}),
    MessageType.EXECUTE_RESPONSE: (ExecuteResponse, {
        "ok": _bool, "data": _bin, "error": _opt_str}, {"processing_time": _duration}),
    MessageType.SIGNAL: (Signal, {"signal": _str, "reason": _str}, {}),
    MessageType.HEARTBEAT: (Heartbeat, {"sequence": _uint64}, {"stats": _stats}),
    MessageType.ERROR: (Error, {"code": _str, "message": _str}, {}),
    MessageType.STREAM_DATA: (StreamData, {
        "stream_id": _uint64, "seq": _uint64, "data": _bin, "end": _bool}, {}),
    MessageType.CONNECTION_CLOSE: (ConnectionClose, {"reason": _str}, {}),
}


def _fields(obj: Any, required: dict[str, Check], optional: dict[str, Check],
            what: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        _bad(f"{what} must be a map")
    missing = required.keys() - obj.keys()
    if missing:
        _bad(f"{what} lacks key(s): {', '.join(sorted(missing))}")
    extra = obj.keys() - required.keys() - optional.keys()
    if extra:
        _bad(f"{what} has unknown key(s): {', '.join(sorted(map(str, extra)))[:200]}")
    out = {key: check(obj[key], key) for key, check in required.items()}
    for key, check in optional.items():
        if key in obj:
            out[key] = check(obj[key], key)
    return out


_MESSAGE_TYPES = {int(t): t for t in MessageType}
_new = object.__new__
_set = object.__setattr__
_EXECUTE_REQUEST_KEYS = frozenset({"method", "data", "deadline"})
_EXECUTE_RESPONSE_KEYS = frozenset({"ok", "data", "error"})
_EXECUTE_RESPONSE_TIMED_KEYS = frozenset({"ok", "data", "error", "processing_time"})
_HEARTBEAT_KEYS = frozenset({"sequence"})


def _message(message_type: MessageType, request_id: int, timestamp: float, payload: bytes,
             version: int) -> SpearMessage:
    """Build an already-checked SpearMessage without re-running its validation."""
    m = _new(SpearMessage)
    _set(m, "message_type", message_type)
    _set(m, "request_id", request_id)
    _set(m, "timestamp", timestamp)
    _set(m, "payload", payload)
    _set(m, "version", version)
    return m


def decode(body: bytes, max_size: int = DEFAULT_MAX_SIZE) -> SpearMessage:
    """Decode one frame into a SpearMessage, strictly. Raises only RemoteProtocolError."""
    if type(body) is not bytes:
        if not isinstance(body, (bytes, bytearray, memoryview)):
            _bad("body must be bytes")
        body = bytes(body)
    if len(body) > max_size:
        _bad(f"message of {len(body)} bytes exceeds the limit of {max_size}",
             ErrorCode.TOO_LARGE)
    obj = _unpack(body, max_size)
    if type(obj) is not dict:
        _bad("message must be a map")
    version = obj.get("version")
    if type(version) is int and version not in SUPPORTED_VERSIONS:
        _bad(f"protocol version {version} is not supported", ErrorCode.UNSUPPORTED_VERSION)
    if obj.keys() != _ENVELOPE_KEYS:
        _fields(obj, dict.fromkeys(_ENVELOPE_KEYS, _str), {}, "message")  # raises precisely
    if type(version) is not int:
        _bad("version must be an int")
    mt = obj["message_type"]
    message_type = _MESSAGE_TYPES.get(mt) if type(mt) is int else None
    if message_type is None:
        _bad(f"unknown message_type {mt}" if type(mt) is int else "message_type must be an int")
    request_id = obj["request_id"]
    if type(request_id) is not int or not 0 <= request_id <= MAX_REQUEST_ID:
        _bad("request_id must be an int in 0..2**64-1")
    timestamp = obj["timestamp"]
    if type(timestamp) is not float:
        timestamp = _float(timestamp, "timestamp")
    elif timestamp - timestamp != 0.0:  # NaN or infinity
        _bad("timestamp must be finite")
    payload = obj["payload"]
    if type(payload) is not bytes:
        _bad("payload must be bin")
    return _message(message_type, request_id, timestamp, payload, version)


def peek_execute_response(body: bytes, max_size: int = DEFAULT_MAX_SIZE
                          ) -> tuple[int, bool, bytes, str | None, float | None] | None:
    """``(request_id, ok, data, error, processing_time)`` if ``body`` is a well-formed
    EXECUTE_RESPONSE of the supported version, else None (the caller then takes the strict
    path, which reports what is wrong). One pass, no records: the server's hottest inbound
    frame. ``processing_time`` is None when the peer did not send it."""
    if len(body) > max_size:
        return None
    try:
        obj = _unpack(body, max_size)
        if type(obj) is not dict or obj.keys() != _ENVELOPE_KEYS or \
                obj["message_type"] != 4 or type(obj["message_type"]) is not int or \
                obj["version"] not in SUPPORTED_VERSIONS or type(obj["version"]) is not int:
            return None
        request_id, timestamp, payload = obj["request_id"], obj["timestamp"], obj["payload"]
        if type(request_id) is not int or not 0 <= request_id <= MAX_REQUEST_ID or \
                type(payload) is not bytes or not (
                    (type(timestamp) is float and timestamp - timestamp == 0.0)
                    or type(timestamp) is int):
            return None
        fields = _unpack(payload, max_size)
    except RemoteProtocolError:
        return None
    if type(fields) is not dict:
        return None
    keys = fields.keys()
    took: float | None = None
    if keys != _EXECUTE_RESPONSE_KEYS:
        if keys != _EXECUTE_RESPONSE_TIMED_KEYS:
            return None
        raw = fields["processing_time"]  # as the strict path: ints accepted, finite, >= 0
        if type(raw) is float and 0.0 <= raw < math.inf:
            took = raw
        elif type(raw) is int and raw >= 0:
            took = float(raw)
        else:
            return None
    ok, data, error = fields["ok"], fields["data"], fields["error"]
    if type(ok) is not bool or type(data) is not bytes or not (
            error is None or type(error) is str):
        return None
    return request_id, ok, data, error, took


def decode_payload(message: SpearMessage, max_size: int = DEFAULT_MAX_SIZE) -> Payload:
    """Decode and check ``message.payload`` for its type. Raises only RemoteProtocolError."""
    obj = _unpack(message.payload, max_size)
    mt = message.message_type
    # fast paths for the frames that carry the traffic; anything unusual takes the strict path
    if type(obj) is dict:
        if mt is MessageType.EXECUTE_RESPONSE and obj.keys() == _EXECUTE_RESPONSE_KEYS:
            ok, data, error = obj["ok"], obj["data"], obj["error"]
            if type(ok) is bool and type(data) is bytes and (error is None
                                                             or type(error) is str):
                r = _new(ExecuteResponse)
                _set(r, "ok", ok)
                _set(r, "data", data)
                _set(r, "error", error)
                return r
        elif mt is MessageType.EXECUTE_REQUEST and obj.keys() == _EXECUTE_REQUEST_KEYS:
            method, data, deadline = obj["method"], obj["data"], obj["deadline"]
            if type(method) is str and type(data) is bytes and (
                    deadline is None or (type(deadline) is float
                                         and deadline - deadline == 0.0)):
                q = _new(ExecuteRequest)
                _set(q, "method", method)
                _set(q, "data", data)
                _set(q, "deadline", deadline)
                return q
        elif mt is MessageType.HEARTBEAT and obj.keys() == _HEARTBEAT_KEYS:
            sequence = obj["sequence"]
            if type(sequence) is int and 0 <= sequence <= MAX_REQUEST_ID:
                h = _new(Heartbeat)
                _set(h, "sequence", sequence)
                _set(h, "stats", None)
                return h
    cls, required, optional = _SCHEMA[mt]
    fields = _fields(obj, required, optional, f"{mt.name} payload")
    try:
        return cls(**fields)
    except LocalProtocolError as exc:  # belt and braces: the checks above should catch all
        _bad(str(exc))


def encode_payload(payload: Payload) -> bytes:
    """msgpack bytes of a payload record (keys exactly as in the contract)."""
    cls, required, optional = _SCHEMA[payload.TYPE]
    if type(payload) is not cls:
        raise LocalProtocolError(f"{type(payload).__name__} is not a payload record")
    fields: dict[str, Any] = {key: getattr(payload, key) for key in required}
    for key in optional:
        value = getattr(payload, key)
        if value is not None:
            fields[key] = value
    if isinstance(payload, AuthRequest):
        fields["extra_params"] = dict(payload.extra_params)
    elif isinstance(payload, AuthResponse):
        fields["supported_features"] = list(payload.supported_features)
    elif isinstance(payload, Heartbeat) and payload.stats is not None:
        fields["stats"] = dict(payload.stats)
    return msgpack.packb(fields, use_bin_type=True)  # type: ignore[no-any-return]


def encode(message: SpearMessage) -> bytes:
    """msgpack bytes of the envelope: one frame on the wire."""
    return msgpack.packb({  # type: ignore[no-any-return]
        "message_type": int(message.message_type),
        "request_id": message.request_id,
        "timestamp": message.timestamp,
        "payload": message.payload,
        "version": message.version,
    }, use_bin_type=True)


def pack_execute_request(request_id: int, method: str, data: bytes, deadline: float | None,
                         timestamp: float) -> bytes:
    """Fast path for the hottest frame: same bytes as ``pack(ExecuteRequest(...))``, without
    building the records (the caller guarantees the types)."""
    return _packb({"message_type": 3, "request_id": request_id, "timestamp": timestamp,
                   "payload": _packb({"method": method, "data": data, "deadline": deadline}),
                   "version": PROTOCOL_VERSION})


def pack_execute_response(request_id: int, ok: bool, data: bytes, error: str | None,
                          timestamp: float, processing_time: float | None = None) -> bytes:
    """Fast path: same bytes as ``pack(ExecuteResponse(...))``."""
    fields: dict[str, Any] = {"ok": ok, "data": data, "error": error}
    if processing_time is not None:
        fields["processing_time"] = processing_time
    return _packb({"message_type": 4, "request_id": request_id, "timestamp": timestamp,
                   "payload": _packb(fields), "version": PROTOCOL_VERSION})


def make_message(payload: Payload, request_id: int, timestamp: float) -> SpearMessage:
    """Wrap a payload record in an envelope."""
    return SpearMessage(payload.TYPE, request_id, float(timestamp), encode_payload(payload))


def pack(payload: Payload, request_id: int, timestamp: float) -> bytes:
    """Envelope + payload straight to frame bytes."""
    return encode(make_message(payload, request_id, timestamp))
