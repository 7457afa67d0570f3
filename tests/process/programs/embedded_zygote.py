"""A program embedding a SpearSystem with two handler (zygote-forked) instances, for the
no-orphans tests (run it, never import it). Prints ``{"instances": {id: pid}}`` once both are
READY, then waits for EOF on stdin and shuts down gracefully."""

from __future__ import annotations

import json
import sys

from spear_actors import InstanceConfig, SpearSystem, SystemConfig

WAIT = 30.0


def main() -> int:
    system = SpearSystem.start(SystemConfig())
    try:
        config = InstanceConfig(entry="spear_actors.examples.echo:echo")
        ids = [system.create_instance("echo", config) for _ in range(2)]
        pids = {i: system.wait_ready(i, WAIT).pid for i in ids}
        print(json.dumps({"instances": pids}), flush=True)
        sys.stdin.read()
    finally:
        system.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
