"""A program embedding a SpearSystem, for the no-orphans tests (run it, never import it).

It starts ``SpearSystem.start(SystemConfig())`` with three instances: the echo example (a real
client), ``sleep 300`` and ``sh -c 'sleep 300 & sleep 300; wait'`` (which never connect back;
``startup_timeout=60`` so they are not replaced for it), then prints one JSON line
``{"instances": {id: pid}}``. Then it reads commands from stdin, one per line:

* ``spawn`` — create one more ``sleep 300`` instance and print ``{"spawned": pid}``;
* EOF — shut the system down gracefully and exit 0.
"""

from __future__ import annotations

import json
import sys

from spear_actors import InstanceConfig, InstanceState, SpearSystem, SystemConfig

WAIT = 30.0
SPAWNED = {InstanceState.CONNECTING, InstanceState.READY, InstanceState.BUSY}


def create(system: SpearSystem, task: str, command: list[str]) -> str:
    instance_id: str = system.create_instance(
        task, InstanceConfig(command=command, startup_timeout=60.0))
    return instance_id


def pid_of(system: SpearSystem, instance_id: str) -> int:
    """The instance's pid, once its process has been spawned (create_instance returns before)."""
    info = system.wait_state(instance_id, SPAWNED, WAIT)
    assert info.pid is not None, info
    return int(info.pid)


def main() -> int:
    system = SpearSystem.start(SystemConfig())
    try:
        ids = [create(system, "echo", [sys.executable, "-m", "spear_actors.examples.echo"]),
               create(system, "sleep", ["sleep", "300"]),
               create(system, "shell", ["sh", "-c", "sleep 300 & sleep 300; wait"])]
        system.wait_ready(ids[0], WAIT)
        print(json.dumps({"instances": {i: pid_of(system, i) for i in ids}}), flush=True)
        for line in sys.stdin:
            if line.strip() == "spawn":
                new = create(system, "sleep", ["sleep", "300"])
                print(json.dumps({"spawned": pid_of(system, new)}), flush=True)
    finally:
        system.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
