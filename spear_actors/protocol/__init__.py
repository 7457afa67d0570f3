"""The sans-IO wire protocol: types, codec and sessions. Imports only stdlib and msgpack."""

from .codec import decode, decode_payload, encode, encode_payload, make_message, pack
from .types import (
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
    "PROTOCOL_VERSION",
    "AuthRequest",
    "AuthResponse",
    "ConnectionClose",
    "Error",
    "ErrorCode",
    "ExecuteRequest",
    "ExecuteResponse",
    "Heartbeat",
    "MessageType",
    "Payload",
    "Signal",
    "SpearMessage",
    "StreamData",
    "decode",
    "decode_payload",
    "encode",
    "encode_payload",
    "make_message",
    "pack",
]
