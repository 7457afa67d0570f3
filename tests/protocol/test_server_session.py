"""ServerProtocol against the rules of DESIGN.md section 2, driven by real ClientSessions.

A small :class:`Net` ferries frames between the server and its clients (h11's
ConnectionPair idea) under an explicit fake clock: no sockets, no sleeps.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spear_actors.protocol import (
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
    pack,
)
from spear_actors.protocol.auth import AuthPolicy
from spear_actors.protocol.client import (
    AuthAccepted,
    AuthRejected,
    ClientEvent,
    ClientSession,
    ClientState,
    ErrorReceived,
    HeartbeatAck,
    RequestReceived,
    ServerClosed,
)
from spear_actors.protocol.server import (
    Authenticated,
    AuthenticationFailed,
    Closed,
    Delivered,
    Dropped,
    Mute,
    Opened,
    Output,
    Send,
    ServerProtocol,
    ServerSettings,
)
from spear_actors.records import ConnectionStatus

SECRET_A = secrets.token_hex(32)
SECRET_B = secrets.token_hex(32)
T0 = 1_000.0
OutT = TypeVar("OutT")
GARBAGE = b"\xc1 not msgpack"


@dataclass
class Net:
    """One ServerProtocol and the ClientSessions talking to it, under a fake clock."""

    server: ServerProtocol
    now: float = T0
    clients: dict[bytes, ClientSession] = field(default_factory=dict)
    events: dict[bytes, list[ClientEvent]] = field(default_factory=dict)
    outputs: list[Output] = field(default_factory=list)
    """Everything the server ever returned (for the secret-leak check)."""

    def client(self, rid: bytes, instance_id: str, token: str) -> ClientSession:
        self.clients[rid] = ClientSession(instance_id, token)
        self.events[rid] = []
        return self.clients[rid]

    def connect(self, rid: bytes, instance_id: str, token: str) -> list[Output]:
        """A fresh DEALER ``rid`` sends its AUTH_REQUEST."""
        return self.send(rid, self.client(rid, instance_id, token).start(self.now))

    def send(self, rid: bytes, body: bytes) -> list[Output]:
        return self._ferry(self.server.receive(rid, body, self.now, remote_addr="127.0.0.1"))

    def send_payload(self, rid: bytes, payload: Payload, request_id: int = 0) -> list[Output]:
        return self.send(rid, pack(payload, request_id, self.now))

    def heartbeat(self, rid: bytes) -> list[Output]:
        return self.send(rid, self.clients[rid].heartbeat(self.now))

    def tick(self) -> list[Output]:
        return self._ferry(self.server.tick(self.now))

    def _ferry(self, outs: list[Output]) -> list[Output]:
        self.outputs.extend(outs)
        for out in outs:
            if isinstance(out, Send) and out.routing_id in self.clients:
                event = self.clients[out.routing_id].receive(out.body, self.now)
                self.events[out.routing_id].append(event)
        return outs


def sends(outs: list[Output], rid: bytes | None = None) -> list[tuple[SpearMessage, Payload]]:
    """The decoded frames among ``outs`` (to ``rid`` only, if given)."""
    found = []
    for out in outs:
        if isinstance(out, Send) and (rid is None or out.routing_id == rid):
            message = decode(out.body)
            assert message.message_type is out.message_type
            found.append((message, decode_payload(message)))
    return found


def only(outs: list[Output], kind: type[OutT]) -> list[OutT]:
    return [o for o in outs if isinstance(o, kind)]


def make_net(validator: Callable[[str, str], bool] | None = None, max_connections: int = 1024,
             **settings_kw: float) -> Net:
    policy = AuthPolicy(validator=validator, max_connections=max_connections)
    policy.expect("inst-a", SECRET_A)
    policy.expect("inst-b", SECRET_B)
    holder: list[Net] = []
    server = ServerProtocol(ServerSettings(**settings_kw), policy,  # type: ignore[arg-type]
                            wall_clock=lambda: holder[0].now)
    holder.append(Net(server))
    return holder[0]


@pytest.fixture
def net() -> Net:
    return make_net()


def auth_ok(net: Net, rid: bytes = b"A", instance: str = "inst-a",
            secret: str = SECRET_A) -> Authenticated:
    outs = net.connect(rid, instance, secret)
    (auth,) = only(outs, Authenticated)
    assert isinstance(auth, Authenticated)
    return auth


def assert_refused(net: Net, outs: list[Output], rid: bytes, reason: str) -> None:
    """A refusal as the contract has it: generic AUTH_RESPONSE, routing id forgotten."""
    responses = [p for _, p in sends(outs, rid) if isinstance(p, AuthResponse)]
    assert responses == [AuthResponse(False, None, "authentication failed",
                                      responses[0].server_version, (),
                                      net.server.settings.heartbeat_interval)]
    (failed,) = only(outs, AuthenticationFailed)
    assert isinstance(failed, AuthenticationFailed) and failed.reason == reason
    (closed,) = only(outs, Closed)
    assert isinstance(closed, Closed)
    assert (closed.routing_id, closed.reason, closed.was_authenticated) == (rid,
                                                                           "auth_failed", False)
    assert not only(outs, Authenticated)
    assert net.server.session_for(rid) is None
    assert net.events[rid][-1] == AuthRejected("authentication failed")
    assert net.clients[rid].state is ClientState.CLOSED


# --- authentication -------------------------------------------------------------------------

def test_good_auth(net: Net) -> None:
    outs = net.connect(b"A", "inst-a", SECRET_A)
    assert isinstance(outs[0], Opened) and outs[0].routing_id == b"A"
    assert outs[0].remote_addr == "127.0.0.1"
    ((message, response),) = sends(outs, b"A")
    assert isinstance(response, AuthResponse)
    assert response.success and response.error_message is None
    assert message.request_id == 1  # the AUTH_REQUEST's id, repeated
    assert message.timestamp == T0
    assert response.session_id is not None and len(response.session_id) >= 32
    assert int(response.session_id, 16) >= 0
    assert response.heartbeat_interval == net.server.settings.heartbeat_interval
    (auth,) = only(outs, Authenticated)
    assert auth == Authenticated(outs[0].connection_id, b"A", "inst-a", response.session_id,
                                 "process", net.clients[b"A"].client_version, None)
    assert net.events[b"A"] == [AuthAccepted(response.session_id, 1.0,
                                             response.supported_features)]
    assert net.clients[b"A"].state is ClientState.AUTHENTICATED
    assert (len(net.server), net.server.authenticated_count, net.server.pending_count) == (
        1, 1, 0)
    assert net.server.session_of_instance("inst-a") is net.server.session_for(b"A")


def test_session_ids_differ_per_auth(net: Net) -> None:
    ids = {auth_ok(net, bytes([i]), "inst-a").session_id for i in range(20)}
    ids.add(auth_ok(net, b"B", "inst-b", SECRET_B).session_id)
    assert len(ids) == 21
    assert all(len(s) >= 32 for s in ids)


@pytest.mark.parametrize(("instance", "token", "reason"), [
    ("inst-a", "wrong-secret-0123456789", "bad_secret"),
    ("inst-a", SECRET_B, "bad_secret"),  # another instance's secret
    ("inst-a", "", "bad_secret"),
    ("inst-zzz", SECRET_A, "unknown_instance"),
    ("", SECRET_A, "unknown_instance"),
])
def test_refused(net: Net, instance: str, token: str, reason: str) -> None:
    outs = net.connect(b"X", instance, token)
    assert_refused(net, outs, b"X", reason)
    assert len(net.server) == 0 and net.server.pending_count == 0
    assert net.server.counters == {"auth_failed": 1}


def constant_validator(answer: bool) -> Callable[[str, str], bool]:
    return lambda _instance_id, _token: answer


def test_refusals_are_indistinguishable_to_the_peer() -> None:
    bodies: set[bytes] = set()
    reasons: set[str] = set()
    attempts = [(True, "inst-a", SECRET_B),   # bad secret
                (True, "nobody", SECRET_A),   # unknown instance
                (False, "inst-a", SECRET_A),  # validator says no
                (True, "inst-s", "short77")]  # token too short
    for accept, instance, token in attempts:
        net = make_net(validator=constant_validator(accept))
        net.server.policy.expect("inst-s", "short77")
        outs = net.connect(b"X", instance, token)
        reasons |= {o.reason for o in only(outs, AuthenticationFailed)}
        (send,) = only(outs, Send)
        assert isinstance(send, Send)
        bodies.add(send.body)
    assert len(reasons) == 4 and len(bodies) == 1


def test_validator_rejecting() -> None:
    seen: list[tuple[str, str]] = []

    def validator(instance_id: str, token: str) -> bool:
        seen.append((instance_id, token))
        return instance_id != "inst-a"

    net = make_net(validator=validator)
    assert_refused(net, net.connect(b"X", "inst-a", SECRET_A), b"X", "rejected_by_validator")
    auth_ok(net, b"B", "inst-b", SECRET_B)
    assert seen == [("inst-a", SECRET_A), ("inst-b", SECRET_B)]


def test_validator_that_raises_refuses_without_crashing() -> None:
    def validator(instance_id: str, token: str) -> bool:
        raise RuntimeError("validator bug")

    net = make_net(validator=validator)
    assert_refused(net, net.connect(b"X", "inst-a", SECRET_A), b"X", "rejected_by_validator")
    assert len(net.server) == 0


def test_short_token_refused_even_if_it_matches(net: Net) -> None:
    net.server.policy.expect("inst-s", "1234567")  # 7 characters
    assert_refused(net, net.connect(b"X", "inst-s", "1234567"), b"X", "invalid_token")
    net.server.policy.expect("inst-8", "12345678")  # 8 is enough
    auth_ok(net, b"Y", "inst-8", "12345678")


def test_forgotten_instance_is_refused(net: Net) -> None:
    net.server.policy.forget("inst-a")
    assert_refused(net, net.connect(b"X", "inst-a", SECRET_A), b"X", "unknown_instance")


def assert_refused_silently(outs: list[Output], rid: bytes) -> None:
    """A throttled peer's failure: no answer, no AuthenticationFailed, muted and forgotten."""
    assert not sends(outs, rid)
    assert not only(outs, AuthenticationFailed)
    assert any(isinstance(o, Dropped) and o.code == "auth_throttled" for o in outs)
    assert Mute(rid, "auth_throttled") in outs
    (closed,) = only(outs, Closed)
    assert isinstance(closed, Closed) and closed.routing_id == rid


def test_throttling_after_repeated_failures_never_refuses_the_right_secret(net: Net) -> None:
    """DESIGN.md section 11: failures are throttled per peer, and an attacker's failures
    never delay the legitimate instance."""
    for i in range(5):
        assert_refused(net, net.connect(bytes([i]), "inst-a", "wrong-secret-xyz"), bytes([i]),
                       "bad_secret")
    # this peer is out of tokens: its next failures are refused without a word
    assert_refused_silently(net.connect(b"W1", "inst-a", "wrong-secret-xyz"), b"W1")
    assert_refused_silently(net.connect(b"W2", "nobody", SECRET_A), b"W2")
    # but the right secret, from the same address, is accepted at once
    auth_ok(net, b"R1", "inst-a", SECRET_A)
    auth_ok(net, b"B", "inst-b", SECRET_B)
    net.now += 1.1  # a token has refilled: one failure is answered again
    assert_refused(net, net.connect(b"W3", "inst-a", "wrong-secret-xyz"), b"W3", "bad_secret")
    assert net.server.counters["auth_failed"] == 6
    assert net.server.counters["auth_throttled"] == 2


def test_throttle_refills_one_attempt_at_a_time(net: Net) -> None:
    for i in range(5):
        net.connect(bytes([i]), "inst-a", "wrong-secret-xyz")
    net.now += 1.0
    assert_refused(net, net.connect(b"W", "inst-a", "still-wrong-xyz"), b"W", "bad_secret")
    assert_refused_silently(net.connect(b"X", "inst-a", "still-wrong-xyz"), b"X")


def test_max_connections() -> None:
    net = make_net(max_connections=1)
    first = auth_ok(net, b"A", "inst-a")
    outs = net.connect(b"B", "inst-b", SECRET_B)
    frames = sends(outs, b"B")
    assert [m.message_type for m, _ in frames] == [MessageType.ERROR, MessageType.AUTH_RESPONSE]
    assert frames[0][1] == Error("too_many_connections", "connection limit reached")
    assert frames[0][0].request_id == frames[1][0].request_id == 1
    response = frames[1][1]
    assert isinstance(response, AuthResponse) and not response.success
    assert response.error_message == "authentication failed"
    (failed,) = only(outs, AuthenticationFailed)
    assert isinstance(failed, AuthenticationFailed)
    assert failed.reason == "too_many_connections"
    assert net.server.session_for(b"B") is None
    # the limit does not stop the same instance from re-authenticating (it replaces itself)
    again = auth_ok(net, b"A2", "inst-a")
    assert again.superseded == first.connection_id
    assert net.server.authenticated_count == 1
    # a full server is not the peer's fault: no throttling from it
    for i in range(6):
        net.connect(bytes([100 + i]), "inst-b", SECRET_B)
    net.server.close_instance("inst-a", "stopped", net.now)
    auth_ok(net, b"B2", "inst-b", SECRET_B)


def test_superseded_connection(net: Net) -> None:
    old = auth_ok(net, b"A1", "inst-a")
    net.now += 1
    outs = net.connect(b"A2", "inst-a", SECRET_A)
    (close_msg,) = sends(outs, b"A1")
    assert close_msg[1] == ConnectionClose("superseded")
    (closed,) = only(outs, Closed)
    assert isinstance(closed, Closed)
    assert (closed.connection_id, closed.reason, closed.was_authenticated) == (
        old.connection_id, "superseded", True)
    (new,) = only(outs, Authenticated)
    assert isinstance(new, Authenticated)
    assert new.superseded == old.connection_id and new.session_id != old.session_id
    assert net.events[b"A1"][-1] == ServerClosed("superseded")
    assert net.server.session_of_instance("inst-a") is net.server.session_for(b"A2")
    assert net.server.session_for(b"A1") is None
    assert len(net.server) == 1 and net.server.authenticated_count == 1


def test_auth_request_from_an_authenticated_peer_is_a_bad_message(net: Net) -> None:
    auth_ok(net)
    outs = net.send_payload(b"A", AuthRequest("inst-a", SECRET_A, "1", "process"), 5)
    assert [p for _, p in sends(outs)] == [
        Error("bad_message", "AUTH_REQUEST is not accepted from instances")]
    assert net.server.session_for(b"A") is not None


# --- before authentication ------------------------------------------------------------------

def test_a_message_before_auth_gets_one_error_and_the_peer_is_muted(net: Net) -> None:
    """DESIGN.md section 11: one bounded answer, then the peer's frames are dropped without
    being decoded until it reconnects under a new routing id."""
    all_outs: list[Output] = []
    for i in range(5):
        all_outs += net.send_payload(b"P", Heartbeat(i), request_id=10 + i)
    frames = sends(all_outs)
    assert [p for _, p in frames] == [Error("not_authenticated", "authenticate first")]
    assert frames[0][0].request_id == 10
    assert Mute(b"P", "not_authenticated") in all_outs
    assert net.server.counters == {"not_authenticated": 1, "muted_dropped": 4}
    # its session is closed at once: a muted peer never holds a pending slot
    assert len(net.server) == 0 and net.server.pending_count == 0
    net.now += 10.0
    assert [type(o) for o in net.send_payload(b"P", Heartbeat(5))] == [Dropped]  # muted
    # another peer gets its own ERROR at once
    assert len(sends(net.send_payload(b"Q", Heartbeat(0)))) == 1


def test_a_muted_peer_gets_a_fresh_chance_under_a_new_routing_id(net: Net) -> None:
    net.send_payload(b"A", Heartbeat(1))
    outs = net.send(b"A", net.client(b"A", "inst-a", SECRET_A).start(net.now))
    assert not only(outs, Authenticated) and not sends(outs)
    outs = net.send(b"A2", net.client(b"A2", "inst-a", SECRET_A).start(net.now))
    assert only(outs, Authenticated) and only(outs, Opened)


def test_garbage_from_unauthenticated_is_dropped_silently_and_muted(net: Net) -> None:
    outs = net.send(b"G", GARBAGE)
    assert [type(o) for o in outs] == [Opened, Dropped, Mute, Closed]
    ((opened,), (dropped,)) = only(outs, Opened), only(outs, Dropped)
    assert (dropped.connection_id, dropped.code) == (opened.connection_id, "bad_message")
    assert not sends(outs)
    assert [type(o) for o in net.send(b"G", msgpack.packb([1, 2, 3]))] == [Dropped]
    assert net.server.counters == {"bad_message": 1, "muted_dropped": 1}
    outs = net.send(b"G", net.client(b"G", "inst-a", SECRET_A).start(net.now))
    assert [type(o) for o in outs] == [Dropped]  # not even a valid AUTH_REQUEST is heard


def test_too_large_from_unauthenticated_is_counted() -> None:
    net = make_net(max_message_size=100)
    outs = net.send(b"G", b"\x00" * 101)
    assert [type(o) for o in outs] == [Opened, Dropped, Mute, Closed]
    assert net.server.counters == {"too_large": 1}


def test_unsupported_version_from_unauthenticated(net: Net) -> None:
    raw = msgpack.packb({"message_type": 1, "request_id": 3, "timestamp": 0.0,
                         "payload": b"", "version": 2}, use_bin_type=True)
    outs = net.send(b"V", raw)
    assert [p for _, p in sends(outs)] == [
        Error("unsupported_version", "protocol version 2 is not supported")]
    assert net.server.counters == {"unsupported_version": 1}
    assert Mute(b"V", "unsupported_version") in outs
    net.now += 1
    assert not sends(net.send(b"V", raw))  # one answer: the peer is muted


def test_an_unauthenticated_peer_never_waits_for_auth_timeout() -> None:
    """Its first frame decides: authenticated, refused or muted, the session never lingers
    as pending (DESIGN.md section 11), so auth_timeout and max_pending are never reached."""
    net = make_net(heartbeat_timeout=60.0, max_pending=2)
    for rid in (b"G1", b"G2", b"G3"):
        closed = only(net.send(rid, GARBAGE), Closed)
        assert [(c.routing_id, c.reason) for c in closed] == [(rid, "muted")]
    closed = only(net.send_payload(b"H", Heartbeat(1)), Closed)
    assert [(c.routing_id, c.reason) for c in closed] == [(b"H", "muted")]
    assert net.server.pending_count == 0 and len(net.server) == 0
    auth_ok(net, b"A")  # no slot is held by the muted ones
    net.now += net.server.settings.auth_timeout
    assert net.tick() == []
    assert "too_many_pending" not in net.server.counters


# --- authenticated traffic ------------------------------------------------------------------

def test_heartbeat_echo(net: Net) -> None:
    auth_ok(net)
    for expected in (1, 2, 3):
        net.now += 1
        outs = net.heartbeat(b"A")
        ((message, payload),) = sends(outs, b"A")
        assert payload == Heartbeat(expected)
        assert net.events[b"A"][-1] == HeartbeatAck(expected)
        session = net.server.session_for(b"A")
        assert session is not None and session.heartbeat_sequence == expected
        assert session.last_activity == net.now
    net.now += 1
    outs = net.send_payload(b"A", Heartbeat(77, {"cpu": 0.5}), request_id=4)
    ((message, payload),) = sends(outs)
    assert payload == Heartbeat(77) and message.request_id == 4


def test_heartbeat_timeout(net: Net) -> None:
    auth_ok(net)
    limit = net.server.settings.heartbeat_timeout
    for _ in range(5):  # heartbeats keep it alive well past one timeout
        net.now += limit - 0.5
        assert net.tick() == []
        net.heartbeat(b"A")
    last = net.now
    net.now = last + limit - 0.001
    assert net.tick() == []
    net.now = last + limit
    outs = net.tick()
    assert [p for _, p in sends(outs, b"A")] == [ConnectionClose("heartbeat_timeout")]
    (closed,) = only(outs, Closed)
    assert isinstance(closed, Closed)
    assert (closed.instance_id, closed.reason, closed.was_authenticated) == (
        "inst-a", "heartbeat_timeout", True)
    assert net.events[b"A"][-1] == ServerClosed("heartbeat_timeout")
    assert net.server.session_of_instance("inst-a") is None and len(net.server) == 0
    assert net.server.send_to_instance("inst-a", Signal("stop")) is None


def test_idle_timeout_when_shorter_than_heartbeat_timeout() -> None:
    net = make_net(connection_timeout=2.0, heartbeat_timeout=3.0)
    auth_ok(net)
    net.now += 2.0
    (_, closed) = net.tick()
    assert isinstance(closed, Closed) and closed.reason == "idle_timeout"


def test_garbage_from_authenticated_gets_errors_then_cut_off() -> None:
    net = make_net(max_bad_messages=3)
    auth_ok(net)
    for _ in range(2):
        outs = net.send(b"A", GARBAGE)
        assert [type(o) for o in outs] == [Dropped, Send]  # every one answered
        ((_, error),) = sends(outs)
        assert isinstance(error, Error) and error.code == "bad_message"
        assert isinstance(net.events[b"A"][-1], ErrorReceived)
    net.heartbeat(b"A")  # a good frame resets the count
    for _ in range(2):
        net.send(b"A", GARBAGE)
    assert net.server.session_for(b"A") is not None
    outs = net.send(b"A", msgpack.packb({"message_type": 99}))
    assert [p.TYPE for _, p in sends(outs)] == [MessageType.ERROR,
                                                MessageType.CONNECTION_CLOSE]
    (closed,) = only(outs, Closed)
    assert isinstance(closed, Closed) and closed.reason == "protocol_error"
    assert closed.was_authenticated
    assert len(net.server) == 0 and net.server.authenticated_count == 0
    assert net.server.counters == {"bad_message": 5}


def test_unsupported_version_from_authenticated(net: Net) -> None:
    auth_ok(net)
    raw = msgpack.packb({"message_type": 6, "request_id": 0, "timestamp": 0.0,
                         "payload": b"", "version": 3}, use_bin_type=True)
    ((_, error),) = sends(net.send(b"A", raw))
    assert isinstance(error, Error) and error.code == "unsupported_version"


@pytest.mark.parametrize("payload", [ExecuteRequest("x", b""), Signal("stop"),
                                     AuthResponse(True, "s", None, "v", (), 1.0)])
def test_server_only_messages_from_an_instance_are_refused(net: Net, payload: Payload) -> None:
    auth_ok(net)
    outs = net.send_payload(b"A", payload, request_id=8)
    ((message, error),) = sends(outs)
    assert isinstance(error, Error) and error.code == "bad_message"
    assert message.request_id == 8
    assert net.server.counters == {"bad_message": 1}


def test_execute_round_trip(net: Net) -> None:
    auth_ok(net)
    send = net.server.send_to_instance("inst-a", ExecuteRequest("echo", b"hi", T0 + 5), 41)
    assert send is not None and send.routing_id == b"A"
    net._ferry([send])
    assert net.events[b"A"][-1] == RequestReceived(41, "echo", b"hi", T0 + 5)
    outs = net.send(b"A", net.clients[b"A"].respond(41, net.now, b"hi"))
    (delivered,) = outs
    assert isinstance(delivered, Delivered)
    assert (delivered.instance_id, delivered.routing_id) == ("inst-a", b"A")
    assert delivered.message.request_id == 41
    assert delivered.payload == ExecuteResponse(True, b"hi", None)


@pytest.mark.parametrize("payload", [ExecuteResponse(False, b"", "boom"),
                                     StreamData(1, 0, b"x", True),
                                     Error("timeout", "too slow")])
def test_application_messages_are_delivered(net: Net, payload: Payload) -> None:
    auth_ok(net)
    (delivered,) = net.send_payload(b"A", payload, request_id=3)
    assert isinstance(delivered, Delivered) and delivered.payload == payload
    assert delivered.message.request_id == 3


def test_connection_close_from_peer(net: Net) -> None:
    auth_ok(net)
    outs = net.send(b"A", net.clients[b"A"].close("bye", net.now))
    (closed,) = only(outs, Closed)
    assert outs == [Closed(closed.connection_id, b"A", "inst-a", "peer_closed", True)]
    assert len(net.server) == 0 and net.server.session_of_instance("inst-a") is None


def test_connection_close_from_unauthenticated_peer(net: Net) -> None:
    outs = net.send_payload(b"U", ConnectionClose("bye"))
    assert [p for _, p in sends(outs)] == [Error("not_authenticated", "authenticate first")]


# --- owner commands and introspection -------------------------------------------------------

def test_next_deadline() -> None:
    net = make_net(auth_timeout=5.0, heartbeat_timeout=10.0)
    assert net.server.next_deadline() is None
    net.send(b"G", GARBAGE)  # muted and closed at once: no deadline
    assert net.server.next_deadline() is None
    net.now += 1
    auth_ok(net, b"A")
    assert net.server.next_deadline() == T0 + 1 + 10
    net.now = T0 + 6
    net.heartbeat(b"A")
    assert net.server.next_deadline() == T0 + 6 + 10
    net.now = T0 + 16 - 1e-6
    assert net.tick() == []
    net.now = T0 + 16
    assert only(net.tick(), Closed)
    assert net.server.next_deadline() is None


def test_close_instance(net: Net) -> None:
    auth_ok(net)
    auth_ok(net, b"B", "inst-b", SECRET_B)
    outs = net.server.close_instance("inst-a", "stopped", net.now)
    net._ferry(outs)
    assert [p for _, p in sends(outs, b"A")] == [ConnectionClose("stopped")]
    (closed,) = only(outs, Closed)
    assert isinstance(closed, Closed) and closed.reason == "stopped"
    assert net.events[b"A"][-1] == ServerClosed("stopped")
    assert net.server.close_instance("inst-a", "stopped", net.now) == []
    assert net.server.close_instance("nobody", "stopped", net.now) == []
    assert net.server.send_to_instance("inst-a", Signal("stop")) is None
    assert net.server.send_to_instance("inst-b", Signal("stop")) is not None
    assert len(net.server) == 1


def test_close_all(net: Net) -> None:
    auth_ok(net)
    auth_ok(net, b"B", "inst-b", SECRET_B)
    outs = net.server.close_all("shutdown", net.now)
    assert [p for _, p in sends(outs)] == [ConnectionClose("shutdown")] * 2
    assert {o.routing_id for o in only(outs, Closed)} == {b"A", b"B"}
    assert (len(net.server), net.server.pending_count, net.server.authenticated_count) == (
        0, 0, 0)


def test_snapshot(net: Net) -> None:
    net.now += 1
    auth = auth_ok(net, b"A2")
    session = net.server.session_for(b"A2")
    assert session is not None
    net.now += 1
    net.heartbeat(b"A2")
    state = session.snapshot()
    assert state.connection_id == auth.connection_id
    assert state.instance_id == "inst-a"
    assert state.remote_addr == "127.0.0.1"
    assert (state.connected_at, state.last_activity) == (T0 + 1, T0 + 2)
    assert state.authenticated and state.status is ConnectionStatus.ACTIVE
    assert state.client_type == "process"
    assert state.client_version == net.clients[b"A2"].client_version
    assert state.session_id == auth.session_id
    assert state.heartbeat_sequence == 1
    net.server.close_instance("inst-a", "stopped", net.now)
    closed = session.snapshot()
    assert closed.status is ConnectionStatus.CLOSED and not closed.authenticated


def test_custom_connection_ids() -> None:
    ids = iter(["c-x", "c-y"])
    server = ServerProtocol(ServerSettings(), AuthPolicy(),
                            new_connection_id=lambda: next(ids))
    (opened, *_) = server.receive(b"A", GARBAGE, T0)
    assert isinstance(opened, Opened) and opened.connection_id == "c-x"


def test_secret_never_printed() -> None:
    net = make_net(max_connections=1)
    net.server.policy.expect("inst-s", SECRET_A[:7])
    auth_ok(net)                                      # success
    net.connect(b"A2", "inst-a", SECRET_A)            # supersedes
    net.connect(b"B", "inst-b", SECRET_B)             # too many connections
    net.connect(b"X", "inst-b", SECRET_A)             # another instance's secret
    net.connect(b"S", "inst-s", SECRET_A[:7])         # too short
    net.connect(b"U", "nobody", SECRET_A)             # unknown
    net.heartbeat(b"A2")
    net.send(b"A2", GARBAGE)
    net.now += 100
    net.tick()
    texts = [repr(o) for o in net.outputs]
    texts += [repr(net.server.policy), repr(net.server.counters), repr(net.clients[b"A2"]),
              repr(AuthRequest("inst-a", SECRET_A, "1", "process")),
              *(repr(s) + repr(s.snapshot()) for s in net.server.sessions())]
    texts += [repr(c) for c in net.clients.values()]
    assert len(net.outputs) > 20
    for secret in (SECRET_A, SECRET_B, SECRET_A[:7]):
        assert not [t for t in texts if secret in t]
        for out in net.outputs:
            assert not isinstance(out, Send) or secret.encode() not in out.body


# --- robustness -----------------------------------------------------------------------------

frames = st.one_of(
    st.binary(max_size=64),
    st.sampled_from([pack(p, 1, T0) for p in (
        Heartbeat(1), ExecuteResponse(True, b""), ConnectionClose("x"), Signal("stop"),
        AuthRequest("inst-a", SECRET_A, "1", "p"), AuthRequest("inst-a", "nope", "1", "p"),
        AuthRequest("inst-b", SECRET_B, "1", "p"))]),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from([b"r1", b"r2", b"r3"]), frames,
                          st.floats(0, 3)), max_size=30))
def test_nothing_a_peer_sends_breaks_the_server(steps: list[tuple[bytes, bytes, float]]
                                                ) -> None:
    net = make_net(max_connections=2, max_bad_messages=3)
    for rid, body, dt in steps:
        net.now += dt
        net.server.receive(rid, body, net.now)
        net.server.tick(net.now)
        s = net.server
        authed = [x for x in s.sessions() if x.authenticated]
        assert s.authenticated_count == len(authed) <= 2
        assert s.pending_count == len(s) - len(authed) >= 0
        deadline = s.next_deadline()
        assert deadline is None or deadline >= net.now
