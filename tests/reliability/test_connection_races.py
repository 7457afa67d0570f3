"""Races between actors, found under a heartbeat flood on a loaded machine: a ``tell`` to an
instance actor that had just stopped killed the ConnectionActor, and an instance was READY
before the task manager could route to it."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from typing import Any

import pykka
import pytest
from helpers import holds_for, wait_until

from spear_actors import ConnectionConfig
from spear_actors.actors.connection import ConnectionActor
from spear_actors.actors.dataplane import RequestTable
from spear_actors.actors.deps import Services
from spear_actors.actors.listener import Listener
from spear_actors.actors.tasks import TaskExecutionManager
from spear_actors.messages import ExpectInstance, InboundBatch, ListConnections
from spear_actors.protocol import AuthRequest, ConnectionClose, pack
from spear_actors.transport.router import Inbound

from .support import (
    ECHO,
    WAIT,
    Systems,
    instance_config,
    launch,
    leftover_check,
)

SECRET = "s" * 43


class Sink(pykka.ThreadingActor):
    """Stands in for the monitor and for an instance actor: takes every message."""

    def on_receive(self, message: Any) -> Any:
        return None


@pytest.fixture
def actors() -> Iterator[list[pykka.ActorRef[Any]]]:
    with leftover_check():
        refs: list[pykka.ActorRef[Any]] = []
        yield refs
        for ref in refs:
            ref.stop(timeout=5)


def frame(routing_id: bytes, body: bytes) -> InboundBatch:
    return InboundBatch([Inbound(routing_id, body, time.monotonic(), "127.0.0.1")])


def test_a_dead_instance_actor_does_not_take_the_connection_actor_with_it(
        actors: list[pykka.ActorRef[Any]]) -> None:
    monitor = Sink.start()
    instance = Sink.start()
    services = Services()
    services.set("monitor", monitor)
    listener = Listener(ConnectionConfig(), services, RequestTable())  # never bound
    connection = ConnectionActor.start(ConnectionConfig(), listener, services)
    actors += [connection, monitor]
    connection.tell(ExpectInstance("inst-1", SECRET, instance, 1))
    instance.stop(timeout=5)  # its ForgetInstance is still on the way

    # it authenticates now: the news goes to a dead actor
    connection.tell(frame(b"peer", pack(AuthRequest("inst-1", SECRET, "1", "process", {}),
                                        1, time.time())))
    [state] = connection.ask(ListConnections(), timeout=5)
    assert state.instance_id == "inst-1" and state.authenticated
    # and its connection goes: so does that news
    connection.tell(frame(b"peer", pack(ConnectionClose("bye"), 0, time.time())))
    assert connection.ask(ListConnections(), timeout=5) == []
    assert connection.is_alive()


def test_an_instance_is_routable_as_soon_as_it_is_ready(monkeypatch: pytest.MonkeyPatch,
                                                         systems: Systems) -> None:
    """wait_ready() returned, yet a submit right after failed with "no task or instance
    named ..." (seen under a heartbeat flood, with a probe submitting to another instance).
    Two holes: the InstanceActor published READY before it told the task manager the route;
    and a new submission joins the drain already queued for earlier ones (one wake-up per
    burst), which may be ahead of the route in the manager's mailbox. Here the manager is held
    on a gate request while such a drain is queued and the instance becomes READY."""
    gate, entered = threading.Event(), threading.Event()
    original = TaskExecutionManager._admit

    def gated_admit(self: TaskExecutionManager, item: Any, now: float) -> None:
        if item.data == b"gate":
            entered.set()
            gate.wait(WAIT)
        original(self, item, now)

    monkeypatch.setattr(TaskExecutionManager, "_admit", gated_admit)
    system = systems.start()
    [other] = launch(system, "other", ECHO)
    held = system.submit(other, b"gate", timeout=WAIT)
    try:
        assert entered.wait(WAIT)
        queued = system.submit(other, b"queued", timeout=WAIT)  # its drain waits behind
        iid = system.create_instance("echo", instance_config(ECHO))

        def announced() -> bool:  # READY published (events: the monitor, not the manager)
            return any(e.data.get("instance_id") == iid
                       for e in system.events(kinds={"InstanceReady"}, limit=None))

        wait_until(announced, WAIT)
        submitted: list[Future[bytes]] = []

        def ready_then_submit() -> None:
            system.wait_ready(iid, timeout=WAIT)
            submitted.append(system.submit(iid, b"at once", timeout=WAIT))

        helper = threading.Thread(target=ready_then_submit, name="ready-then-submit")
        helper.start()
        holds_for(lambda: not submitted, 0.5)  # until it submits, or long enough
    finally:
        gate.set()
    helper.join(WAIT)
    assert submitted and submitted[0].result(WAIT) == b"at once"
    assert held.result(WAIT) == b"gate" and queued.result(WAIT) == b"queued"
