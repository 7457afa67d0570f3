"""ZeroMQ's own gate (ConnectionConfig(gate="plain"), DESIGN.md section 11): instances
present their id and secret as ZMTP PLAIN credentials; libzmq refuses anyone else during
the handshake, so not one of their frames reaches the spearlet's Python code."""

from __future__ import annotations

from typing import Any

import pytest
import zmq
from helpers import holds_for, wait_until
from reliability.support import ECHO, WAIT, Systems, launch

from spear_actors import ConfigError, ConnectionConfig

GATED = ConnectionConfig(heartbeat_interval=0.2, heartbeat_timeout=0.6, gate="plain")


def dealer(ctx: zmq.Context[zmq.Socket[bytes]], endpoint: str, user: str = "",
           password: str = "") -> zmq.Socket[bytes]:
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    if user:
        sock.setsockopt(zmq.PLAIN_USERNAME, user.encode())
        sock.setsockopt(zmq.PLAIN_PASSWORD, password.encode())
    sock.connect(endpoint)
    return sock


def test_only_instances_with_their_secret_get_through(systems: Systems) -> None:
    system = systems.start(GATED)
    [echo] = launch(system, "echo", ECHO)  # InstanceClient follows SPEAR_GATE=plain
    assert system.execute(echo, b"gated", timeout=WAIT) == b"gated"
    before = system.metrics()
    opened = before["connection_totals"]["total_opened"]
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        anonymous = dealer(ctx, system.endpoint)
        impostor = dealer(ctx, system.endpoint, echo, "not-the-secret-" + "x" * 30)
        stranger = dealer(ctx, system.endpoint, "nobody", "not-the-secret-" + "x" * 30)
        for sock in (anonymous, impostor, stranger):
            for _ in range(200):
                try:
                    sock.send(b"\xc1 garbage", zmq.NOBLOCK)
                except zmq.Again:
                    break
        # the two with credentials were refused by the ZAP handler; the anonymous one's
        # handshake fails on the mechanism alone
        wait_until(lambda: system.metrics()["errors"].get("gate_denied", 0) >= 2, WAIT,
                   message="two connections refused at the gate")
        assert holds_for(lambda: not any(s.poll(0) for s in (anonymous, impostor, stranger)),
                         0.3)
        after = system.metrics()
        assert after["connection_totals"]["total_opened"] == opened  # no session at all
        for code in ("bad_message", "not_authenticated", "muted_dropped", "auth_failed"):
            assert after["errors"].get(code, 0) == before["errors"].get(code, 0), code
        assert after["auth_failures"] == before["auth_failures"]
    finally:
        ctx.destroy(0)
    info = system.instance(echo)
    assert info.restarts == 0 and info.state.is_serving
    assert system.execute(echo, b"still", timeout=WAIT) == b"still"


def test_a_restarted_instance_is_let_in_with_its_new_secret(systems: Systems) -> None:
    system = systems.start(GATED)
    [echo] = launch(system, "echo", ECHO)
    old = system.instance(echo)
    system.restart_instance(echo)
    new = wait_until(lambda: (i := system.instance(echo)).state.is_serving
                     and i.pid != old.pid and i, WAIT, message="the replacement READY")
    assert new.restarts == old.restarts + 1
    assert system.execute(echo, b"new secret", timeout=WAIT) == b"new secret"


def test_the_gate_and_curve_exclude_each_other() -> None:
    public, secret = (k.decode() for k in zmq.curve_keypair())
    with pytest.raises(ConfigError, match="exclude each other"):
        ConnectionConfig(gate="plain", curve_secret_key=secret, curve_public_key=public)
    bad: Any = "zap"
    with pytest.raises(ConfigError, match="gate must be"):
        ConnectionConfig(gate=bad)
