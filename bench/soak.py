"""Soak: chaos under load for a minute or more, then a flood of unauthenticated peers.

``scripts/soak [--seconds 60] [--peers 10000] [--rate 300] [--seed N]``. The same checks as
``tests/reliability/test_chaos.py`` and ``tests/security/test_connections.py``, longer and
bigger (the logic lives beside those tests: ``tests/reliability/chaos.py`` and
``tests/security/flood.py``). Prints progress every few seconds and a summary; exits 1 if an
invariant broke, 0 otherwise.

Not a benchmark (``python -m bench`` runs only ``bench_*.py``).
"""

from __future__ import annotations

import argparse
import gc
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

import pykka  # noqa: E402
from reliability.chaos import Chaos, ChaosConfig, process_usage  # noqa: E402
from reliability.support import ECHO, EchoProbe, instance_config  # noqa: E402
from security.flood import run_flood  # noqa: E402

from spear_actors import (  # noqa: E402
    ConnectionConfig,
    RestartPolicy,
    SpearSystem,
    SystemConfig,
)

AUTH_TIMEOUT = 2.0
HEARTBEAT_INTERVAL = 0.5
HEARTBEAT_TIMEOUT = 1.5
"""Not the tests' 0.2/0.6 s: the ConnectionActor handles every frame in order, and reclaiming
4 096 unauthenticated sessions in one tick (or a 10 000-peer connect burst) holds up the other
instances' heartbeat answers by ~0.3 s on quiet cores, more under load; 0.6 s made healthy
instances reconnect (and lose their requests in flight) during the flood."""
MAX_PENDING = 4_096
RSS_TOLERANCE = 96 << 20
SETTLE = 15.0


def log(line: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {line}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/soak", description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="chaos duration")
    parser.add_argument("--peers", type=int, default=10_000,
                        help="unauthenticated peers in the flood (0: no flood)")
    parser.add_argument("--rate", type=float, default=300.0, help="requests per second")
    parser.add_argument("--instances", type=int, default=4)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)

    gc.collect()
    before = process_usage()
    violations: list[str] = []
    log(f"soak: {args.instances} echo instances, {args.rate:g} requests/s, chaos for "
        f"{args.seconds:g} s, then {args.peers} unauthenticated peers; start {before}")
    system = SpearSystem.start(SystemConfig(connection=ConnectionConfig(
        heartbeat_interval=HEARTBEAT_INTERVAL, heartbeat_timeout=HEARTBEAT_TIMEOUT,
        auth_timeout=AUTH_TIMEOUT, max_pending=MAX_PENDING)))
    try:
        restart = RestartPolicy(max_restarts=100_000, window=60.0, backoff_min=0.05,
                                backoff_max=0.3)
        ids = [system.create_instance("echo", instance_config(ECHO, prefetch=16,
                                                              restart=restart))
               for _ in range(args.instances)]
        for iid in ids:
            system.wait_ready(iid, timeout=30)
        chaos = Chaos(system, ChaosConfig(seconds=args.seconds, rate=args.rate,
                                          seed=args.seed), report=log)
        result = chaos.run()
        log(f"chaos: {result.summary()}")
        violations += [f"chaos: {v}" for v in result.violations()]

        if args.peers:
            log(f"flood: {args.peers} peers that never authenticate")
            with EchoProbe(system, "echo") as probe:
                flood = run_flood(system, args.peers, auth_timeout=AUTH_TIMEOUT,
                                  max_pending=MAX_PENDING, wait=60.0)
            log(f"flood: {flood.summary()}")
            log(f"flood: echo meanwhile: {probe.result.describe()}")
            violations += [f"flood: {v}" for v in flood.violations]
            try:
                probe.result.assert_healthy(minimum=5)
            except AssertionError as exc:
                violations.append(f"flood: {exc}")
    finally:
        system.shutdown(timeout=30)

    # nothing left: actors, threads, descriptors, memory
    deadline = time.monotonic() + SETTLE
    while True:
        gc.collect()
        after = process_usage()
        actors = pykka.ActorRegistry.get_all()
        settled = (not actors and after["threads"] <= before["threads"]
                   and after["fds"] <= before["fds"] + 4
                   and after["rss"] <= before["rss"] + RSS_TOLERANCE)
        if settled or time.monotonic() >= deadline:
            break
        time.sleep(0.2)
    log(f"after shutdown: {after} (start {before}), live actors {len(actors)}")
    if not settled:
        violations.append(f"resources not back: start {before}, after {after}, actors "
                          f"{actors}, threads {[t.name for t in threading.enumerate()]}")

    if violations:
        log(f"soak FAILED: {len(violations)} broken invariants")
        for violation in violations:
            log(f"  - {violation}")
        return 1
    log("soak passed: every invariant held")
    return 0


if __name__ == "__main__":
    sys.exit(main())
