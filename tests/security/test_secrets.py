"""Per-instance secrets: 256 random bits each, all different, replaced on every restart, never
shown anywhere (logs at TRACE, events, errors, tree, metrics, connections, instances), and an
old secret stolen from a previous process no longer opens anything."""

from __future__ import annotations

import base64
import math
import os
import signal
from collections import Counter
from typing import Any

import psutil
import pytest
from helpers import wait_until
from reliability.support import ECHO, WAIT, Systems, launch

from spear_actors import AuthenticationError, InstanceClient, SpearSystem
from spear_actors.protocol.client import AuthRejected

from .support import try_auth


def secret_of(pid: int) -> str:
    return str(psutil.Process(pid).environ()["SPEAR_SECRET"])


def entropy_bits_per_char(text: str) -> float:
    counts = Counter(text)
    return -sum(n / len(text) * math.log2(n / len(text)) for n in counts.values())


def assert_strong(secret: str) -> None:
    raw = base64.urlsafe_b64decode(secret + "=" * (-len(secret) % 4))
    assert len(raw) >= 32, f"only {len(raw) * 8} bits"
    assert len(set(raw)) >= 16, "too few distinct bytes for 32 random ones"
    # 43 random characters of 64 show ~4.5 bits each; a patterned token shows far less
    assert entropy_bits_per_char(secret) >= 3.5, secret[:4]


def restart_by_kill(system: SpearSystem, instance_id: str) -> int:
    old = system.instance(instance_id).pid
    assert old is not None
    os.kill(old, signal.SIGKILL)

    def replaced() -> int | None:
        info = system.instance(instance_id)
        return info.pid if info.state.is_serving and info.pid != old else None

    return int(wait_until(replaced, WAIT, message=f"{instance_id} to be replaced"))


def test_secrets_are_strong_distinct_rotated_and_never_shown(
        systems: Systems, captured_logs: list[Any], caplog: pytest.LogCaptureFixture) -> None:
    system = systems.start()
    ids = launch(system, "echo", ECHO, 3)
    secrets: dict[str, list[str]] = {}
    for iid in ids:
        pid = system.instance(iid).pid
        assert pid is not None
        secrets[iid] = [secret_of(pid)]
        assert_strong(secrets[iid][0])
        assert iid not in secrets[iid][0]
        assert secrets[iid][0] not in " ".join(psutil.Process(pid).cmdline())
    assert len({s[0] for s in secrets.values()}) == len(ids), "two instances share a secret"

    # a restart (kill -9) gives the new process a new secret; the old one is dead
    victim = ids[0]
    new_pid = restart_by_kill(system, victim)
    secrets[victim].append(secret_of(new_pid))
    assert_strong(secrets[victim][1])
    everything = [s for ss in secrets.values() for s in ss]
    assert len(set(everything)) == len(everything)

    stolen = secrets[victim][0]
    events = try_auth(system.endpoint, victim, stolen)
    assert events is not None and isinstance(events[-1], AuthRejected), events
    intruder = InstanceClient(system.endpoint, victim, stolen)
    with pytest.raises(AuthenticationError) as refused:
        intruder.connect(timeout=WAIT)
    intruder.close()
    # nor does another instance's current secret, with this id
    events = try_auth(system.endpoint, victim, secrets[ids[1]][0])
    assert events is not None and isinstance(events[-1], AuthRejected), events
    assert system.execute(victim, b"still mine", timeout=WAIT) == b"still mine"

    shown = [repr(system.events(limit=None)), repr(system.tree()),
             repr(system.tree().to_dict()), repr(system.metrics()),
             repr(system.connections()), repr(system.instances()), str(refused.value),
             repr(refused.value), repr(system)]
    system.shutdown()
    logs = "\n".join(str(m) for m in captured_logs) + caplog.text
    assert victim in logs and "authentication failed" in logs, "the log capture did not work"
    for secret in everything:
        for text in [*shown, logs]:
            assert secret not in text
            assert secret[:16] not in text  # not even a prefix
