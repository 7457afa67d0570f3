"""Dedicated per-instance listeners (ConnectionConfig.per_instance_listeners): each instance
gets a ROUTER of its own that accepts only its own authentication."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import psutil
import zmq

from spear_actors import ConnectionConfig, SpearSystem
from spear_actors.protocol.client import AuthAccepted, AuthRejected, ClientSession
from tests.helpers import wait_until

from .support import echo

FAST = ConnectionConfig(heartbeat_interval=0.2, heartbeat_timeout=0.6,
                        per_instance_listeners=True)


def _instance_env(system: SpearSystem, instance_id: str) -> dict[str, str]:
    pid = system.instance(instance_id).pid
    assert pid is not None
    return psutil.Process(pid).environ()


@contextmanager
def _dealer(endpoint: str) -> Iterator[zmq.Socket[bytes]]:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    try:
        yield sock
    finally:
        sock.close(0)
        ctx.term()


def _authenticate(endpoint: str, instance_id: str, secret: str) -> object | None:
    """The answer to one AUTH_REQUEST (AuthAccepted/AuthRejected), None if no answer."""
    session = ClientSession(instance_id, secret)
    with _dealer(endpoint) as sock:
        sock.send(session.start(time.time()))
        if not sock.poll(3000):
            return None
        return session.receive(sock.recv(), time.time())


def test_each_instance_listens_alone(make_system: Callable[..., SpearSystem]) -> None:
    system = make_system(connection=FAST)
    a = system.create_instance("echo", echo())
    b = system.create_instance("echo", echo())
    system.wait_ready(a, timeout=15)
    system.wait_ready(b, timeout=15)
    env_a, env_b = _instance_env(system, a), _instance_env(system, b)
    ports = {system.port, env_a["SPEAR_COMMUNICATION_PORT"], env_b["SPEAR_COMMUNICATION_PORT"]}
    assert len({str(p) for p in ports}) == 3, "main, a and b must listen on different ports"
    assert system.execute(a, b"to a", timeout=5) == b"to a"
    assert system.execute(b, b"to b", timeout=5) == b"to b"

    # b's own credentials on a's listener, or on the main listener, are refused
    assert isinstance(_authenticate(env_a["SPEAR_COMMUNICATION_ENDPOINT"], b,
                                    env_b["SPEAR_SECRET"]), AuthRejected)
    assert isinstance(_authenticate(system.endpoint, b, env_b["SPEAR_SECRET"]), AuthRejected)
    # ... while on its own listener they work (this supersedes b's live connection)
    assert isinstance(_authenticate(env_b["SPEAR_COMMUNICATION_ENDPOINT"], b,
                                    env_b["SPEAR_SECRET"]), AuthAccepted)
    failures = [e for e in system.events(limit=None) if e.kind == "AuthenticationFailed"]
    assert {e.data["reason"] for e in failures} == {"wrong_listener"}


def test_listener_closes_with_its_instance(make_system: Callable[..., SpearSystem]) -> None:
    system = make_system(connection=FAST)
    a = system.create_instance("echo", echo())
    system.wait_ready(a, timeout=15)
    env = _instance_env(system, a)
    endpoint, secret = env["SPEAR_COMMUNICATION_ENDPOINT"], env["SPEAR_SECRET"]
    system.stop_instance(a, timeout=15)
    # the port is free again: nothing answers there any more
    wait_until(lambda: _authenticate(endpoint, a, secret) is None, 10,
               message="the stopped instance's listener still answers")
