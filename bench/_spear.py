"""Helpers shared by the benchmark modules that drive spear_actors itself (not baselines).

- :func:`running_system` — ``SpearSystem.start`` that is always shut down;
- :func:`echo_config`, :func:`start_echo` — echo instances, waited READY;
- :func:`sequential_latencies`, :func:`pipelined_rate` — the two request workloads;
- :func:`instance_env` — the environment the spearlet gives an instance, for benchmarks that
  start the echo example themselves (no actors in the way).
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING

from bench.baselines import PAYLOAD

if TYPE_CHECKING:
    from spear_actors import InstanceConfig, SpearSystem, SystemConfig

ECHO_COMMAND: tuple[str, ...] = (sys.executable, "-m", "spear_actors.examples.echo")
READY_TIMEOUT = 60.0  # generous: the machine may be shared and loaded
RESULT_TIMEOUT = 120.0

_PASS_ENV = ("PATH", "HOME", "LANG", "TZ", "TMPDIR", "PYTHONPATH", "VIRTUAL_ENV")


def echo_config(prefetch: int = 8, max_concurrency: int = 1, **kwargs: object
                ) -> InstanceConfig:
    """An :class:`InstanceConfig` running ``spear_actors.examples.echo``."""
    from spear_actors import InstanceConfig

    return InstanceConfig(command=list(ECHO_COMMAND), prefetch=prefetch,
                          max_concurrency=max_concurrency, **kwargs)


@contextlib.contextmanager
def running_system(config: SystemConfig | None = None) -> Iterator[SpearSystem]:
    """A started :class:`SpearSystem`, shut down (every instance stopped) however the block
    exits."""
    from spear_actors import SpearSystem, SystemConfig

    system = SpearSystem.start(config or SystemConfig())
    try:
        yield system
    finally:
        system.shutdown(timeout=30)


def start_echo(system: SpearSystem, task_id: str, count: int = 1, prefetch: int = 8,
               max_concurrency: int = 1, timeout: float = READY_TIMEOUT) -> list[str]:
    """Create ``count`` echo instances of ``task_id`` at once and wait until all are READY."""
    cfg = echo_config(prefetch, max_concurrency)
    ids = [system.create_instance(task_id, cfg) for _ in range(count)]
    for iid in ids:
        system.wait_ready(iid, timeout=timeout)
    return ids


def sequential_latencies(system: SpearSystem, target: str, n: int, warmup: int = 200,
                         payload: bytes = PAYLOAD) -> list[float]:
    """``n`` latencies (seconds) of ``system.execute(target, payload)``, one at a time, after
    ``warmup`` untimed ones. Checks every answer."""
    execute, clock = system.execute, time.perf_counter_ns
    samples: list[float] = []
    for i in range(warmup + n):
        t0 = clock()
        out = execute(target, payload, timeout=30)
        t1 = clock()
        if out != payload:
            raise RuntimeError(f"echo returned {out!r:.40}, not the payload")
        if i >= warmup:
            samples.append((t1 - t0) / 1e9)
    return samples


def pipelined_rate(system: SpearSystem, target: str, n: int,
                   payload: bytes = PAYLOAD) -> float:
    """Requests per second: ``n`` ``submit`` s in a row, then wait for every answer (time
    from the first submit to the last answer). Checks every answer afterwards."""
    submit = system.submit
    t0 = time.perf_counter()
    futures = [submit(target, payload) for _ in range(n)]
    deadline = time.monotonic() + max(RESULT_TIMEOUT, n / 500)
    for f in futures:
        f.result(timeout=max(0.0, deadline - time.monotonic()))
    elapsed = time.perf_counter() - t0
    bad = sum(1 for f in futures if f.result() != payload)
    if bad:
        raise RuntimeError(f"{bad} of {n} pipelined answers differ from the payload")
    return n / elapsed


def instance_env(endpoint: str, instance_id: str, secret: str,
                 extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The minimal environment of an instance (DESIGN §2/§3) for a hand-started child."""
    env = {k: v for k, v in os.environ.items() if k in _PASS_ENV or k.startswith("LC_")}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    env.update({
        "SPEAR_INSTANCE_ID": instance_id,
        "SPEAR_SECRET": secret,
        "SPEAR_COMMUNICATION_ENDPOINT": endpoint,
        "SPEAR_COMMUNICATION_TYPE": endpoint.split(":", 1)[0],
    })
    if endpoint.startswith("tcp://"):
        env["SPEAR_COMMUNICATION_PORT"] = endpoint.rsplit(":", 1)[1]
    env.update(extra or {})
    return env


def add_p50_p99(dest: dict[int, list[float]], samples: Sequence[float]) -> None:
    """Append the p50 and p99 of ``samples`` (seconds), in microseconds, to ``dest[50]`` and
    ``dest[99]``."""
    from bench.harness import percentiles

    p = percentiles(samples, [50, 99])
    dest[50].append(p[50] * 1e6)
    dest[99].append(p[99] * 1e6)
