"""PeerCuts: a muted peer's connection is cut CUT_GRACE later, and never a connection that a
reused descriptor number now leads to (real TCP sockets on loopback)."""

from __future__ import annotations

import collections
import os
import socket
from collections.abc import Iterator

import pytest
from helpers import wait_until

from spear_actors.transport.peer_cut import PeerCuts, _peer_identity

WAIT = 5.0


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as server:
        yield server


def _connect(server: socket.socket) -> tuple[socket.socket, socket.socket]:
    """(our end, as accepted; the peer's end)."""
    peer = socket.create_connection(server.getsockname())
    ours, _ = server.accept()
    return ours, peer


def _cut_seen_by(peer: socket.socket) -> bool:
    peer.settimeout(WAIT)
    return peer.recv(1) == b""  # EOF: our side shut the connection down


def test_a_muted_peer_is_cut_after_the_grace(listener: socket.socket) -> None:
    counters: dict[str, int] = collections.defaultdict(int)
    cuts = PeerCuts(counters)
    ours, peer = _connect(listener)
    with ours, peer:
        cuts.known[b"rid"] = (ours.fileno(), _peer_identity(ours.fileno()))
        cuts.request(b"rid", mute=True)
        assert cuts.pending()
        cuts.apply()
        assert b"rid" in cuts.muted and counters["peers_cut"] == 0  # not before the grace
        wait_until(lambda: cuts.pending() and (cuts.apply() or True), WAIT)
        assert counters["peers_cut"] == 1 and b"rid" not in cuts.known
        assert _cut_seen_by(peer)


def test_a_reused_descriptor_is_never_cut(listener: socket.socket) -> None:
    counters: dict[str, int] = collections.defaultdict(int)
    cuts = PeerCuts(counters)
    first, first_peer = _connect(listener)
    fd, identity = first.fileno(), _peer_identity(first.fileno())
    cuts.known[b"rid"] = (fd, identity)
    first.close()
    first_peer.close()
    other, other_peer = _connect(listener)  # another peer, possibly under the same fd number
    with other, other_peer:
        if other.fileno() != fd:  # make it the same number, as the kernel often does
            os.dup2(other.fileno(), fd)
            reused = socket.socket(fileno=fd)
        else:
            reused = other
        try:
            assert _peer_identity(fd) != identity
            cuts.request(b"rid", mute=True)
            cuts.apply()
            wait_until(lambda: cuts.pending() and (cuts.apply() or True), WAIT)
            assert counters["peers_cut"] == 0
            other_peer.sendall(b"x")  # the other connection still works both ways
            reused.settimeout(WAIT)
            assert reused.recv(1) == b"x"
        finally:
            if reused is not other:
                reused.close()


def test_forgetting_a_peer_drops_what_was_known_unless_it_awaits_its_cut() -> None:
    cuts = PeerCuts(collections.defaultdict(int))
    cuts.known[b"a"] = cuts.known[b"b"] = (-1, None)
    cuts.request(b"b", mute=True)
    cuts.request(b"a", mute=False)
    cuts.request(b"b", mute=False)  # muted: kept for its cut
    cuts.apply()
    assert b"a" not in cuts.known and b"b" in cuts.known and list(cuts.muted) == [b"b"]
