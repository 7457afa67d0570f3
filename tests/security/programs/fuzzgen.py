"""Hostile frames for the wire fuzzer: random bytes, malformed msgpack, envelopes with missing,
extra or mistyped keys, unknown message types and versions, broken payloads, and bit-level
mutations of valid frames. Seeded (``random.Random``), so a failing run can be replayed.

Imported by the fuzzing instance program next to it and by the tests (standard library,
msgpack and the sans-IO protocol only).
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable, Iterator
from typing import Any

import msgpack

from spear_actors.errors import RemoteProtocolError
from spear_actors.protocol import codec
from spear_actors.protocol.types import MessageType

MAX_FRAME = 4096
NOT_FROM_INSTANCES = frozenset({MessageType.AUTH_REQUEST, MessageType.AUTH_RESPONSE,
                                MessageType.EXECUTE_REQUEST, MessageType.SIGNAL})
"""Valid types the server refuses (counted as bad_message) from an authenticated peer."""


def _pack(obj: Any) -> bytes:
    data: bytes = msgpack.packb(obj, use_bin_type=True)
    return data


def _envelope(rng: random.Random, message_type: Any, payload: Any, **extra: Any) -> bytes:
    body = {"message_type": message_type, "request_id": rng.randrange(0, 2**64),
            "timestamp": rng.random() * 2e9, "payload": payload, "version": 1}
    body.update(extra)
    return _pack(body)


def _valid_payloads(rng: random.Random) -> list[tuple[int, dict[str, Any]]]:
    text = "".join(rng.choice("abcé😀\x00") for _ in range(rng.randrange(0, 20)))
    blob = rng.randbytes(rng.randrange(0, 64))
    return [
        (1, {"instance_id": text, "token": text * 3, "client_version": "x",
             "client_type": "process", "extra_params": {}}),
        (2, {"success": True, "session_id": text, "error_message": None, "server_version": "1",
             "supported_features": [], "heartbeat_interval": 1.0}),
        (3, {"method": text, "data": blob, "deadline": None}),
        (4, {"ok": rng.random() < 0.5, "data": blob, "error": None}),
        (5, {"signal": "stop", "reason": text}),
        (6, {"sequence": rng.randrange(0, 2**64)}),
        (7, {"code": text, "message": text}),
        (8, {"stream_id": rng.randrange(0, 2**32), "seq": 1, "data": blob, "end": False}),
        (9, {"reason": text}),
    ]


def _random_value(rng: random.Random, depth: int = 0) -> Any:
    choice = rng.randrange(10 if depth < 3 else 7)
    if choice == 0:
        return None
    if choice == 1:
        return rng.random() < 0.5
    if choice == 2:
        return rng.choice([0, -1, 2**63, 2**64 - 1, -(2**63), rng.randrange(-1000, 1000)])
    if choice == 3:
        return rng.choice([0.0, -0.0, float("nan"), float("inf"), 1e308, rng.random()])
    if choice == 4:
        return "".join(chr(rng.randrange(0, 0x2FF)) for _ in range(rng.randrange(0, 16)))
    if choice == 5:
        return rng.randbytes(rng.randrange(0, 32))
    if choice == 6:
        return msgpack.ExtType(rng.randrange(0, 128), rng.randbytes(4))
    if choice == 7:
        return [_random_value(rng, depth + 1) for _ in range(rng.randrange(0, 5))]
    if choice == 8:
        return {str(i): _random_value(rng, depth + 1) for i in range(rng.randrange(0, 5))}
    return {_random_value(rng, 3): _random_value(rng, depth + 1)  # non-str keys
            for _ in range(rng.randrange(0, 3))}


def _safe_pack(obj: Any) -> bytes:
    try:
        return _pack(obj)
    except (TypeError, ValueError, OverflowError):
        return b"\xc1"  # never-used msgpack byte


# -- strategies ------------------------------------------------------------------------------
def random_bytes(rng: random.Random) -> bytes:
    return rng.randbytes(rng.randrange(0, 512))


def wrong_top_level(rng: random.Random) -> bytes:
    return _safe_pack(rng.choice([None, 1, "str", b"bin", [1, 2, 3], 1.5, True]))


def envelope_damaged(rng: random.Random) -> bytes:
    mtype, payload = rng.choice(_valid_payloads(rng))
    body: dict[Any, Any] = {"message_type": mtype, "request_id": 1, "timestamp": 1.0,
                            "payload": _pack(payload), "version": 1}
    key = rng.choice(list(body))
    action = rng.randrange(4)
    if action == 0:
        del body[key]
    elif action == 1:
        body[key] = _random_value(rng)
    elif action == 2:
        body[rng.choice(["extra", "", 1, None])] = _random_value(rng)
    else:
        body = {k.encode() if isinstance(k, str) else k: v for k, v in body.items()}
    return _safe_pack(body)


def unknown_type_or_version(rng: random.Random) -> bytes:
    mtype, payload = rng.choice(_valid_payloads(rng))
    if rng.random() < 0.5:
        return _envelope(rng, rng.choice([0, 10, 99, 255, -1, 2**40]), _pack(payload))
    return _envelope(rng, mtype, _pack(payload), version=rng.choice([0, 2, -1, 2**33]))


def payload_damaged(rng: random.Random) -> bytes:
    mtype, payload = rng.choice(_valid_payloads(rng))
    action = rng.randrange(5)
    if action == 0 and payload:
        del payload[rng.choice(list(payload))]
    elif action == 1 and payload:
        payload[rng.choice(list(payload))] = _random_value(rng)
    elif action == 2:
        payload["unexpected"] = _random_value(rng)
    elif action == 3:
        return _envelope(rng, mtype, rng.randbytes(rng.randrange(0, 40)))
    else:
        return _envelope(rng, mtype, _safe_pack(_random_value(rng)))
    return _envelope(rng, mtype, _safe_pack(payload))


def payload_not_bin(rng: random.Random) -> bytes:
    mtype, payload = rng.choice(_valid_payloads(rng))
    return _envelope(rng, mtype, rng.choice([payload, "text", 5, None, [_pack(payload)]]))


def hostile_lengths(rng: random.Random) -> bytes:
    """Headers that promise far more than follows, deep nesting, huge containers."""
    return rng.choice([
        b"\xc6" + struct.pack(">I", 0xFFFFFFF0) + b"xx",     # bin32 of ~4 GiB
        b"\xdf" + struct.pack(">I", 0xFFFFFFFF),              # map32 with 4 G entries
        b"\xdd" + struct.pack(">I", 100_000) + b"\xc0" * 100,  # array32, mostly missing
        b"\x91" * 2000 + b"\xc0",                               # 2000 nested arrays
        b"\x81\xa1a" * 1000 + b"\xc0",                          # 1000 nested maps
        _pack({"message_type": 6, "request_id": 0, "timestamp": 0.0, "version": 1,
               "payload": _pack({"sequence": 1, "stats": {str(i): i for i in range(5000)}})}),
    ])


def mutated_valid(rng: random.Random) -> bytes:
    mtype, payload = rng.choice(_valid_payloads(rng))
    frame = bytearray(_envelope(rng, mtype, _pack(payload)))
    for _ in range(rng.randrange(1, 4)):
        action = rng.randrange(4)
        if action == 0 and frame:
            frame[rng.randrange(len(frame))] ^= 1 << rng.randrange(8)
        elif action == 1:
            del frame[rng.randrange(len(frame) + 1):]
        elif action == 2:
            at = rng.randrange(len(frame) + 1)
            frame[at:at] = rng.randbytes(rng.randrange(1, 8))
        else:
            frame += frame[: rng.randrange(len(frame) + 1)]
    return bytes(frame[:MAX_FRAME])


def valid_other_types(rng: random.Random) -> bytes:
    mtype, payload = rng.choice(_valid_payloads(rng))
    return _envelope(rng, mtype, _pack(payload))


STRATEGIES: tuple[Callable[[random.Random], bytes], ...] = (
    random_bytes, wrong_top_level, envelope_damaged, unknown_type_or_version, payload_damaged,
    payload_not_bin, hostile_lengths, mutated_valid, valid_other_types)


def frames(seed: int, count: int) -> Iterator[bytes]:
    """``count`` hostile frames; the same seed gives the same frames."""
    rng = random.Random(seed)
    for _ in range(count):
        yield rng.choice(STRATEGIES)(rng)


def classify(frame: bytes) -> str:
    """How the server must treat ``frame`` from an *authenticated* instance:

    ``bad`` (refused, answered with ERROR and counted: undecodable, or a type instances may
    not send, AUTH_REQUEST included), ``close`` (a valid CONNECTION_CLOSE: it ends the
    session), or ``ok`` (a valid HEARTBEAT, EXECUTE_RESPONSE, STREAM_DATA or ERROR: taken,
    not counted).
    """
    try:
        message = codec.decode(frame)
        codec.decode_payload(message)
    except RemoteProtocolError:
        return "bad"
    if message.message_type is MessageType.CONNECTION_CLOSE:
        return "close"
    if message.message_type in NOT_FROM_INSTANCES:
        return "bad"
    return "ok"
