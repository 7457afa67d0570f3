"""ServerProtocol.touch: activity seen outside the protocol (fast-path answers) keeps an
authenticated connection alive; it never revives unknown or unauthenticated peers."""

from __future__ import annotations

from spear_actors.protocol.auth import AuthPolicy
from spear_actors.protocol.client import ClientSession
from spear_actors.protocol.server import Closed, ServerProtocol, ServerSettings

SECRET = "s" * 43


def _authenticated(now: float) -> tuple[ServerProtocol, bytes]:
    policy = AuthPolicy()
    policy.expect("i1", SECRET)
    server = ServerProtocol(ServerSettings(heartbeat_interval=1.0, heartbeat_timeout=3.0),
                            policy)
    client = ClientSession("i1", SECRET)
    server.receive(b"peer", client.start(now), now)
    assert server.authenticated_count == 1
    return server, b"peer"


def test_touch_defers_the_heartbeat_timeout() -> None:
    server, rid = _authenticated(0.0)
    server.touch(rid, 2.5)
    assert not [o for o in server.tick(3.2) if isinstance(o, Closed)]
    closed = [o for o in server.tick(5.6) if isinstance(o, Closed)]
    assert [c.reason for c in closed] == ["heartbeat_timeout"]


def test_without_touch_the_connection_times_out() -> None:
    server, _ = _authenticated(0.0)
    closed = [o for o in server.tick(3.2) if isinstance(o, Closed)]
    assert [c.reason for c in closed] == ["heartbeat_timeout"]


def test_touch_ignores_unknown_and_pending_peers() -> None:
    server, _ = _authenticated(0.0)
    server.touch(b"stranger", 2.0)  # no session is created
    assert len(server) == 1
    server.receive(b"muted", b"\x80", 0.0)  # garbage: muted, its session closed at once
    server.touch(b"muted", 4.9)  # creates nothing
    assert len(server) == 1
    closed = [o for o in server.tick(5.0) if isinstance(o, Closed)]
    assert {c.reason for c in closed} == {"heartbeat_timeout"}
