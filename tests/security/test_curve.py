"""Listening beyond loopback needs ``allow_remote`` and CURVE keys; with CURVE keys the
listener is encrypted (whatever the host), instances get the server key and work end to end,
and a peer without CURVE (or with the wrong server key) gets no answer at all."""

from __future__ import annotations

from typing import Any

import psutil
import pykka
import pytest
import zmq
from helpers import wait_until
from reliability.support import (
    ECHO,
    HEARTBEAT_INTERVAL,
    HEARTBEAT_TIMEOUT,
    WAIT,
    Systems,
    crash_reports,
    launch,
)

from spear_actors import ConfigError, ConnectionConfig, SpearSystem, SystemConfig
from spear_actors.protocol.client import AuthAccepted, AuthRejected

from .support import try_auth

SILENCE = 1.5
"""How long a peer without CURVE waits for an answer that must never come."""


@pytest.mark.parametrize("settings", [
    {"host": "0.0.0.0"},
    {"host": "0.0.0.0", "allow_remote": True},
    {"host": "::", "allow_remote": True},
], ids=["no-allow-remote", "no-curve-keys", "ipv6-no-curve-keys"])
def test_binding_beyond_loopback_is_refused(settings: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match=r"allow_remote|curve"):
        SpearSystem.start(SystemConfig(connection=ConnectionConfig(**settings)))
    wait_until(lambda: not pykka.ActorRegistry.get_all(), WAIT,
               message="the failed start to stop its actors")


@pytest.mark.parametrize("settings", [
    {"curve_secret_key": "s3cr3t-k3y"},
    {"curve_public_key": "pub-k3y"},
    {"curve_secret_key": "x" * 40, "curve_public_key": "bad key"},
    {"curve_secret_key": "x" * 39 + "~", "curve_public_key": "y" * 40},
], ids=["secret-only", "public-only", "malformed-public", "malformed-secret"])
def test_curve_keys_come_as_a_well_formed_pair(settings: dict[str, Any]) -> None:
    """A half pair used to start a listener no instance could reach; a malformed key hung
    the start for 10 s (the pump thread stuck in ``zmq.Context.term``)."""
    with pytest.raises(ConfigError, match="curve") as refused:
        ConnectionConfig(host="0.0.0.0", allow_remote=True, **settings)
    for key in settings.values():
        assert key not in str(refused.value)


def keys() -> tuple[str, str]:
    public, secret = zmq.curve_keypair()
    return public.decode(), secret.decode()


def test_binding_everywhere_with_curve_is_allowed(systems: Systems) -> None:
    public, secret = keys()
    system = systems.start(ConnectionConfig(
        host="0.0.0.0", allow_remote=True, curve_public_key=public, curve_secret_key=secret))
    assert system.endpoint.startswith("tcp://0.0.0.0:")


@pytest.mark.parametrize("allow_remote", [True, False])
def test_curve_listener_serves_instances_and_ignores_plain_peers(
        systems: Systems, captured_logs: list[Any], allow_remote: bool) -> None:
    public, secret = keys()
    system = systems.start(ConnectionConfig(
        host="127.0.0.1", allow_remote=allow_remote, curve_public_key=public,
        curve_secret_key=secret, heartbeat_interval=HEARTBEAT_INTERVAL,
        heartbeat_timeout=HEARTBEAT_TIMEOUT, auth_timeout=1.0))
    [echo] = launch(system, "echo", ECHO)
    pid = system.instance(echo).pid
    assert pid is not None
    environ = psutil.Process(pid).environ()
    assert environ["SPEAR_CURVE_SERVER_KEY"] == public
    assert secret not in environ.values(), "the server's secret key went to an instance"
    assert system.execute(echo, b"over curve", timeout=WAIT) == b"over curve"
    stolen = environ["SPEAR_SECRET"]
    opened = system.metrics()["connection_totals"]["total_opened"]

    # without CURVE, even with valid credentials: no answer, no session
    assert try_auth(system.endpoint, echo, stolen, timeout=SILENCE) is None
    # with CURVE but the wrong server key: the same
    wrong = zmq.curve_keypair()[0]
    assert try_auth(system.endpoint, echo, stolen, timeout=SILENCE,
                    curve_server_key=wrong) is None
    assert system.metrics()["connection_totals"]["total_opened"] == opened
    # with the right server key, the protocol's own checks still apply
    events = try_auth(system.endpoint, echo, "wrong-secret-" + "x" * 30,
                      curve_server_key=public.encode())
    assert events is not None and isinstance(events[-1], AuthRejected), events
    assert system.execute(echo, b"unaffected", timeout=WAIT) == b"unaffected"
    assert [c.instance_id for c in system.connections()] == [echo]
    # and a CURVE peer with the real credentials would get in (the positive control)
    events = try_auth(system.endpoint, echo, stolen, curve_server_key=public.encode())
    assert events is not None and isinstance(events[-1], AuthAccepted), events
    assert not crash_reports(captured_logs)
