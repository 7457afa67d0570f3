"""Service actors survive a failure on a told message; asks still report theirs."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pykka
import pytest

from spear_actors.actors.service import ServiceActor


@dataclass(frozen=True)
class Boom:
    pass


@dataclass(frozen=True)
class AskBoom:
    pass


class Probe(ServiceActor):
    ASKED = (AskBoom,)

    def handle(self, message: Any) -> Any:
        if isinstance(message, (Boom, AskBoom)):
            raise RuntimeError("bug")
        if message == "failures":
            return self.failures
        return "ok"


@pytest.fixture
def probe() -> Iterator[pykka.ActorRef[Any]]:
    ref = Probe.start()
    yield ref
    ref.stop(timeout=5)


def test_told_failure_is_survived_and_counted(probe: pykka.ActorRef[Any]) -> None:
    probe.tell(Boom())
    probe.tell(Boom())
    assert probe.ask("ping", timeout=5) == "ok"
    assert probe.ask("failures", timeout=5) == 2
    assert probe.is_alive()


def test_asked_failure_goes_back_to_the_caller(probe: pykka.ActorRef[Any]) -> None:
    with pytest.raises(RuntimeError, match="bug"):
        probe.ask(AskBoom(), timeout=5)
    assert probe.ask("ping", timeout=5) == "ok"
