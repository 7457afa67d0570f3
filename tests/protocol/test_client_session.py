"""ClientSession (the instance side), fed hand-made server frames under an explicit clock."""

from __future__ import annotations

import pytest

from spear_actors.errors import LocalProtocolError
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
    StreamData,
    decode,
    decode_payload,
    pack,
)
from spear_actors.protocol.client import (
    CLIENT_VERSION,
    AuthAccepted,
    AuthRejected,
    ClientSession,
    ClientState,
    ErrorReceived,
    HeartbeatAck,
    Ignored,
    RequestReceived,
    ServerClosed,
    SignalReceived,
    StreamReceived,
)

TOKEN = "0123456789abcdef" * 4
T0 = 100.0
SESSION_ID = "5e" * 16


def state(session: ClientSession) -> ClientState:
    """The state, read through a call (so that type checkers do not pin it between calls)."""
    return session.state


def frame(payload: Payload, request_id: int = 0, now: float = T0) -> bytes:
    return pack(payload, request_id, now)


def accepted(interval: float = 1.0) -> bytes:
    return frame(AuthResponse(True, SESSION_ID, None, "srv/1", ("heartbeat",), interval), 1)


def decoded(body: bytes) -> tuple[int, float, Payload]:
    message = decode(body)
    assert message.version == PROTOCOL_VERSION
    return message.request_id, message.timestamp, decode_payload(message)


@pytest.fixture
def client() -> ClientSession:
    return ClientSession("inst-1", TOKEN, extra_params={"pid": "42"})


@pytest.fixture
def authed(client: ClientSession) -> ClientSession:
    client.start(T0)
    assert isinstance(client.receive(accepted(), T0), AuthAccepted)
    return client


def test_start_sends_auth_request(client: ClientSession) -> None:
    assert state(client) is ClientState.IDLE
    body = client.start(T0, request_id=7)
    assert decode(body).message_type is MessageType.AUTH_REQUEST
    assert decoded(body) == (7, T0, AuthRequest("inst-1", TOKEN, CLIENT_VERSION, "process",
                                                 {"pid": "42"}))
    assert state(client) is ClientState.AUTHENTICATING
    with pytest.raises(LocalProtocolError):
        client.start(T0)


def test_client_type_and_version_are_sent() -> None:
    client = ClientSession("i", TOKEN, client_type="go", client_version="go/2")
    _, _, payload = decoded(client.start(T0))
    assert isinstance(payload, AuthRequest)
    assert (payload.client_type, payload.client_version, payload.extra_params) == (
        "go", "go/2", {})


def test_auth_accepted(client: ClientSession) -> None:
    client.start(T0)
    assert client.heartbeat_interval is None and client.silence_limit() is None
    event = client.receive(accepted(0.5), T0 + 0.1)
    assert event == AuthAccepted(SESSION_ID, 0.5, ("heartbeat",))
    assert state(client) is ClientState.AUTHENTICATED
    assert client.session_id == SESSION_ID
    assert client.heartbeat_interval == 0.5
    assert client.silence_limit() == 1.5


def test_auth_rejected(client: ClientSession) -> None:
    client.start(T0)
    event = client.receive(frame(AuthResponse(False, None, "authentication failed", "s",
                                              (), 1.0), 1), T0)
    assert event == AuthRejected("authentication failed")
    assert state(client) is ClientState.CLOSED
    with pytest.raises(LocalProtocolError):
        client.heartbeat(T0)


def test_success_without_session_id_is_a_rejection(client: ClientSession) -> None:
    client.start(T0)
    event = client.receive(frame(AuthResponse(True, None, None, "s", (), 1.0), 1), T0)
    assert isinstance(event, AuthRejected)


def test_error_while_authenticating(client: ClientSession) -> None:
    client.start(T0)
    event = client.receive(frame(Error("too_many_connections", "limit"), 1), T0)
    assert event == ErrorReceived("too_many_connections", "limit", 1)
    assert state(client) is ClientState.AUTHENTICATING


def test_heartbeat_before_auth_raises(client: ClientSession) -> None:
    with pytest.raises(LocalProtocolError):
        client.heartbeat(T0)
    client.start(T0)
    with pytest.raises(LocalProtocolError):
        client.heartbeat(T0)
    with pytest.raises(LocalProtocolError):
        client.respond(1, T0, b"")
    assert not client.heartbeat_due(T0 + 100)
    assert not client.server_silent(T0 + 100)


def test_heartbeat_due_timing(authed: ClientSession) -> None:
    assert not authed.heartbeat_due(T0)
    assert not authed.heartbeat_due(T0 + 0.999)
    assert authed.heartbeat_due(T0 + 1.0)
    body = authed.heartbeat(T0 + 1.0, {"cpu": 0.5, "rss": 123})
    assert decoded(body) == (0, T0 + 1.0, Heartbeat(1, {"cpu": 0.5, "rss": 123}))
    assert not authed.heartbeat_due(T0 + 1.5)
    assert authed.heartbeat_due(T0 + 2.0)
    assert decoded(authed.heartbeat(T0 + 2.0))[2] == Heartbeat(2)
    assert decoded(authed.heartbeat(T0 + 3.0))[2] == Heartbeat(3)


def test_server_silent_timing(authed: ClientSession) -> None:
    assert not authed.server_silent(T0 + 2.999)
    assert authed.server_silent(T0 + 3.0)
    assert authed.receive(frame(Heartbeat(1)), T0 + 2.0) == HeartbeatAck(1)
    assert not authed.server_silent(T0 + 4.999)
    assert authed.server_silent(T0 + 5.0)
    # garbage is not a sign of life
    authed.receive(b"\xc1", T0 + 4.0)
    assert authed.server_silent(T0 + 5.0)


def test_silence_factor_is_configurable() -> None:
    client = ClientSession("i", TOKEN, heartbeat_timeout_factor=5.0)
    client.start(T0)
    client.receive(accepted(2.0), T0)
    assert not client.server_silent(T0 + 9.9)
    assert client.server_silent(T0 + 10.0)


def test_request_received(authed: ClientSession) -> None:
    event = authed.receive(frame(ExecuteRequest("echo", b"\x00data", T0 + 9), 77), T0)
    assert event == RequestReceived(77, "echo", b"\x00data", T0 + 9)
    event = authed.receive(frame(ExecuteRequest("", b""), 78), T0)
    assert event == RequestReceived(78, "", b"", None)


def test_respond(authed: ClientSession) -> None:
    assert decoded(authed.respond(77, T0 + 1, b"out")) == (
        77, T0 + 1, ExecuteResponse(True, b"out", None))
    assert decoded(authed.respond(78, T0 + 2, ok=False, error="ValueError: x")) == (
        78, T0 + 2, ExecuteResponse(False, b"", "ValueError: x"))


@pytest.mark.parametrize(("payload", "event"), [
    (Signal("stop", "operator"), SignalReceived("stop", "operator")),
    (Signal("drain"), SignalReceived("drain", "")),
    (StreamData(3, 4, b"x", True), StreamReceived(3, 4, b"x", True)),
    (Heartbeat(9), HeartbeatAck(9)),
    (Error("unknown_request", "no such id"), ErrorReceived("unknown_request", "no such id", 5)),
])
def test_other_server_messages(authed: ClientSession, payload: Payload,
                               event: object) -> None:
    assert authed.receive(frame(payload, 5), T0) == event


def test_server_closed(authed: ClientSession) -> None:
    assert authed.receive(frame(ConnectionClose("superseded")), T0) == ServerClosed(
        "superseded")
    assert state(authed) is ClientState.CLOSED
    assert isinstance(authed.receive(frame(Heartbeat(1)), T0), Ignored)
    with pytest.raises(LocalProtocolError):
        authed.heartbeat(T0)


@pytest.mark.parametrize("body", [
    b"", b"\xc1", b"\x93\x01\x02\x03",
    frame(Heartbeat(1)).replace(b"version\x01", b"version\x02"),
    frame(Heartbeat(1))[:-3],
], ids=["empty", "not-msgpack", "list", "version-2", "truncated"])
def test_garbage_ignored_and_counted(authed: ClientSession, body: bytes) -> None:
    event = authed.receive(body, T0 + 1)
    assert isinstance(event, Ignored) and event.reason.startswith("malformed frame")
    assert authed.ignored == 1
    assert state(authed) is ClientState.AUTHENTICATED
    assert authed.last_received == T0


def test_oversize_frame_ignored() -> None:
    client = ClientSession("i", TOKEN, max_message_size=64)
    client.start(T0)
    assert isinstance(client.receive(frame(ExecuteRequest("m", b"x" * 100)), T0), Ignored)


def test_unexpected_messages_ignored(client: ClientSession) -> None:
    assert isinstance(client.receive(accepted(), T0), Ignored)  # not started: ignored
    client.start(T0)
    assert isinstance(client.receive(frame(ExecuteRequest("m", b"")), T0), Ignored)
    assert state(client) is ClientState.AUTHENTICATING
    client.receive(accepted(), T0)
    assert isinstance(client.receive(accepted(), T0), Ignored)  # a second AUTH_RESPONSE
    assert isinstance(client.receive(frame(ExecuteResponse(True, b"")), T0), Ignored)
    assert isinstance(client.receive(frame(AuthRequest("i", TOKEN, "1", "p")), T0), Ignored)
    assert client.ignored == 5
    assert state(client) is ClientState.AUTHENTICATED


def test_close_and_reset(authed: ClientSession) -> None:
    assert decoded(authed.close("bye", T0 + 1)) == (0, T0 + 1, ConnectionClose("bye"))
    assert state(authed) is ClientState.CLOSED
    authed.reset()
    assert state(authed) is ClientState.IDLE and authed.session_id is None
    assert authed.heartbeat_interval is None and authed.ignored == 0
    authed.start(T0 + 2)
    authed.receive(accepted(), T0 + 2)
    assert decoded(authed.heartbeat(T0 + 3))[2] == Heartbeat(1)  # sequence starts again


def test_repr_hides_the_token(authed: ClientSession) -> None:
    assert TOKEN not in repr(authed)
    assert "inst-1" in repr(authed)
