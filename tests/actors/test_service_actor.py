"""ServiceActor: a failure on a told message is a crash reported to the root; an asked
message's failure goes back to the caller and the actor carries on (Pykka's semantics)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pykka
import pytest
from helpers import wait_until

from spear_actors.actors.deps import ServiceLink
from spear_actors.actors.service import ServiceActor
from spear_actors.messages import Crash, ServiceFailed


@dataclass(frozen=True)
class Boom:
    pass


@dataclass(frozen=True)
class Ping:
    pass


class Parent(pykka.ThreadingActor):
    """Stands in for the RuntimeActor: records what its children report."""

    def __init__(self) -> None:
        super().__init__()
        self.reports: list[ServiceFailed] = []
        self.got = threading.Event()

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, ServiceFailed):
            self.reports.append(message)
            self.got.set()
        return list(self.reports)


class Probe(ServiceActor):
    released = threading.Event()

    def handle(self, message: Any) -> Any:
        if isinstance(message, Boom):
            raise RuntimeError("bug")
        return "ok"

    def release(self) -> None:
        Probe.released.set()


@pytest.fixture
def parent() -> Iterator[pykka.ActorRef[Any]]:
    ref = Parent.start()
    yield ref
    ref.stop(timeout=5)


def start_probe(parent: pykka.ActorRef[Any]) -> pykka.ActorRef[Any]:
    Probe.released.clear()
    return Probe.start(ServiceLink("probe", 7, parent))


@pytest.mark.parametrize("message", [Boom(), Crash("drill")], ids=["bug", "inject_crash"])
def test_told_failure_stops_the_actor_and_reports_it(parent: pykka.ActorRef[Any],
                                                     message: Any) -> None:
    probe = start_probe(parent)
    probe.tell(message)
    wait_until(lambda: not probe.is_alive(), timeout=5, message="the probe to stop")
    reports: list[ServiceFailed] = parent.ask(Ping(), timeout=5)
    wait_until(lambda: parent.ask(Ping(), timeout=5), timeout=5, message="the report")
    reports = parent.ask(Ping(), timeout=5)
    assert len(reports) == 1
    assert reports[0].service == "probe" and reports[0].generation == 7
    assert type(message).__name__ in ("Boom",) or "drill" in reports[0].reason
    assert Probe.released.is_set()  # its resources were given back although on_stop never ran


def test_asked_failure_goes_back_to_the_caller(parent: pykka.ActorRef[Any]) -> None:
    probe = start_probe(parent)
    try:
        with pytest.raises(RuntimeError, match="bug"):
            probe.ask(Boom(), timeout=5)
        assert probe.ask(Ping(), timeout=5) == "ok"
        assert probe.is_alive()
        assert parent.ask(Ping(), timeout=5) == []
    finally:
        probe.stop(timeout=5)
