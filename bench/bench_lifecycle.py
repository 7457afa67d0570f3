"""Instance lifecycle: create → READY, kill -9 → READY again, and a batch of instances started
at once, beside the process start + connect floor measured in the same run.

- create → READY: ``create_instance`` + ``wait_ready`` of an echo instance on a running
  system (each instance stopped after); DESIGN §6: ≤ floor + 10 ms.
- kill -9 → READY: ``os.kill(pid, SIGKILL)`` of a READY echo instance until ``wait_ready``
  returns with the replacement (RestartPolicy with zero backoff); DESIGN §6: ≤ floor + 20 ms.
- batch: N instances created at once until all are READY (N = 100, quick 20), beside N floor
  children started at once.

Handler instances forked from a zygote (DESIGN §10), same floor, same run:

- zygote create → READY (target ≤ 5 ms median), zygote kill -9 → READY (≤ 10 ms), as above
  with ``InstanceConfig(entry="spear_actors.examples.echo:echo")`` (its zygote warm);
- create → READY with a ``preload`` module that takes 200 ms to import, beside the same without
  (adds nothing: the zygote imported it once);
- N zygote instances created at once → all READY, per instance;
- warm-pool claim: ``create_instance`` + ``wait_ready`` with ``prestart=2`` while the pool
  is full and READY (target ≤ 1 ms).

The floor (``baselines.spawn_connect_floor``): start Python, ``import zmq, msgpack``, connect
a DEALER, first frame at our ROUTER.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from typing import TYPE_CHECKING

import zmq

from bench import baselines as b
from bench._spear import READY_TIMEOUT, echo_config, running_system
from bench.harness import BenchContext, Measurement, Row, percentiles, stop_process

if TYPE_CHECKING:
    from spear_actors import InstanceConfig, SpearSystem

CREATE = "create → READY"
KILL = "kill -9 → READY again"
BATCH = "instances started at once → all READY"
BATCH_PER = "batch start, per instance"
FLOOR = "spawn python + import zmq, msgpack + connect + 1st frame"
FLOOR_BATCH = "floor children started at once → all connected"

ZCREATE = "zygote create → READY"
ZKILL = "zygote kill -9 → READY again"
ZPRELOAD = "zygote create → READY, 200 ms preload"
ZBATCH_PER = "zygote batch start, per instance"
POOL = "warm-pool claim → READY"
ZYGOTE_ROWS = (ZCREATE, ZKILL, ZPRELOAD, ZBATCH_PER, POOL)
SLOW_PRELOAD = "import time\ntime.sleep(0.2)\n"

POLL = 0.001


def _median(values: list[float]) -> float:
    return percentiles(values, [50])[50]


def handler_config(**kwargs: object) -> InstanceConfig:
    from spear_actors import InstanceConfig

    return InstanceConfig(entry="spear_actors.examples.echo:echo", prefetch=0,
                          **kwargs)  # type: ignore[arg-type]


def _create_samples(system: SpearSystem, n: int, cfg: InstanceConfig | None = None
                    ) -> list[float]:
    cfg = cfg if cfg is not None else echo_config(prefetch=0)
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        iid = system.create_instance("life-create", cfg)
        try:
            system.wait_ready(iid, timeout=READY_TIMEOUT)
            samples.append(time.perf_counter() - t0)
        finally:
            system.stop_instance(iid)
    return samples


def _kill_samples(system: SpearSystem, iid: str, n: int) -> list[float]:
    from spear_actors import InstanceState

    ready = (InstanceState.READY, InstanceState.BUSY)
    samples = []
    for _ in range(n):
        info = system.wait_ready(iid, timeout=READY_TIMEOUT)
        old_pid = info.pid
        assert old_pid is not None
        t0 = time.perf_counter()
        os.kill(old_pid, signal.SIGKILL)
        deadline = time.monotonic() + READY_TIMEOUT
        while True:  # until the system notices; then wait for READY by event
            info = system.instance(iid)
            if info.pid != old_pid and info.state in ready:
                break
            if info.state not in ready:
                system.wait_ready(iid, timeout=max(0.1, deadline - time.monotonic()))
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"instance {iid} still READY with its killed pid")
            time.sleep(POLL)
        samples.append(time.perf_counter() - t0)
    return samples


def _batch(n: int, cfg: InstanceConfig | None = None) -> float:
    """Seconds from the first create_instance to the last instance READY (fresh system, so
    that stopping the batch is the system's parallel shutdown). A zygote is started (one
    instance, stopped) before the clock starts."""
    with running_system() as system:
        if cfg is None:
            cfg = echo_config(prefetch=0)
        else:
            _create_samples(system, 1, cfg)
        t0 = time.perf_counter()
        ids = [system.create_instance("life-batch", cfg) for _ in range(n)]
        for iid in ids:
            system.wait_ready(iid, timeout=READY_TIMEOUT + n)
        return time.perf_counter() - t0


def parallel_spawn_floor(n: int, timeout: float = 60.0) -> float:
    """Seconds from starting ``n`` floor children at once (as fast as Popen goes) to the last
    one's first frame at our ROUTER; each is answered so it exits, and all are reaped."""
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        router.linger = 0
        port = router.bind_to_random_port("tcp://127.0.0.1")
        env = b._instance_env(f"tcp://127.0.0.1:{port}")
        cmd = [sys.executable, "-c", b.SPAWN_CHILD]
        t0 = time.perf_counter()
        for _ in range(n):
            # own session, as the spearlet starts instances: with the kernel's autogroup
            # scheduling a session is a scheduling group, so on a loaded machine children
            # sharing the bench's session would get far less CPU than instances do
            procs.append(subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL,
                                          stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL, start_new_session=True))
        got = 0
        deadline = time.monotonic() + timeout
        while got < n:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not router.poll(int(remaining * 1000) + 1):
                raise TimeoutError(f"only {got}/{n} floor children connected in {timeout} s")
            rid, _body = router.recv_multipart()
            got += 1
            router.send_multipart([rid, b"bye"])
        elapsed = time.perf_counter() - t0
        for p in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=5)
        return elapsed
    finally:
        for p in procs:
            stop_process(p)
        router.close(0)
        ctx.term()


def run(ctx: BenchContext) -> list[Row]:
    from spear_actors import RestartPolicy

    single = ctx.selected(CREATE, KILL, FLOOR)
    batch = ctx.selected(BATCH, BATCH_PER, FLOOR_BATCH)
    n = ctx.scale(10, 4)
    n_batch = ctx.scale(100, 20)
    floor: list[float] = []
    create: list[float] = []
    kill: list[float] = []
    batch_total: list[float] = []
    floor_batch: list[float] = []
    if single:
        with running_system() as system:
            policy = RestartPolicy(backoff_min=0.0, backoff_max=0.1, jitter=0.0,
                                   max_restarts=10_000, window=60.0)
            victim = system.create_instance("life-kill", echo_config(prefetch=0,
                                                                     restart=policy))
            system.wait_ready(victim, timeout=READY_TIMEOUT)
            for r in range(ctx.repeats):
                ctx.progress(f"single {r + 1}/{ctx.repeats}: floor, {n} starts")
                floor.append(_median(b.spawn_connect_floor(n)) * 1e3)
                ctx.progress(f"single {r + 1}/{ctx.repeats}: create → READY, {n} instances")
                create.append(_median(_create_samples(system, n)) * 1e3)
                ctx.progress(f"single {r + 1}/{ctx.repeats}: kill -9 → READY, {n} kills")
                kill.append(_median(_kill_samples(system, victim, n)) * 1e3)
    zygote = ctx.selected(*ZYGOTE_ROWS)
    zcreate: list[float] = []
    zkill: list[float] = []
    zpreload: list[float] = []
    zbatch: list[float] = []
    pool: list[float] = []
    if zygote:
        zcreate, zkill, zpreload, zbatch, pool = _zygote(ctx, n, n_batch, floor)
    if batch:
        for r in range(ctx.repeats):
            ctx.progress(f"batch {r + 1}/{ctx.repeats}: {n_batch} floor children at once")
            floor_batch.append(parallel_spawn_floor(n_batch) * 1e3)
            ctx.progress(f"batch {r + 1}/{ctx.repeats}: {n_batch} instances at once")
            batch_total.append(_batch(n_batch) * 1e3)
    rows: list[Row] = []
    if single:
        floor_m = Measurement(FLOOR, "ms", floor)
        rows += [
            Row(Measurement(CREATE, "ms", create), floor_m, "value <= baseline + 10 ms",
                note=f"median of {n} per repeat; echo instance, system already running, "
                     "each instance stopped after; DESIGN §6 target floor + 10 ms"),
            Row(Measurement(KILL, "ms", kill), floor_m, "value <= baseline + 20 ms",
                note=f"median of {n} per repeat; from os.kill(SIGKILL) to wait_ready "
                     "returning with the replacement; RestartPolicy(backoff_min=0); "
                     "DESIGN §6 target floor + 20 ms"),
        ]
    if batch:
        rows += [
            Row(Measurement(f"{n_batch} {BATCH}", "ms", batch_total),
                Measurement(f"{n_batch} {FLOOR_BATCH}", "ms", floor_batch),
                note=f"{n_batch} create_instance calls in a row, then wait_ready on each "
                     "(fresh system per repeat)"),
            Row(Measurement(BATCH_PER, "ms", [v / n_batch for v in batch_total]),
                Measurement(f"{FLOOR_BATCH}, per child", "ms",
                            [v / n_batch for v in floor_batch])),
        ]
    if zygote:
        floor_m = Measurement(FLOOR, "ms", floor)
        rows += [
            Row(Measurement(ZCREATE, "ms", zcreate), floor_m, "value <= 5 ms",
                note=f"median of {n} per repeat; entry echo handler, zygote already warm, "
                     "each instance stopped after; DESIGN §10 target 5 ms"),
            Row(Measurement(ZKILL, "ms", zkill), floor_m, "value <= 10 ms",
                note=f"median of {n} per repeat; RestartPolicy(backoff_min=0); "
                     "DESIGN §10 target 10 ms"),
            Row(Measurement(ZPRELOAD, "ms", zpreload), Measurement(ZCREATE, "ms", zcreate),
                "value <= baseline + 2 ms",
                note="preload = a module whose import sleeps 200 ms; baseline: the same "
                     "create without it"),
            Row(Measurement(ZBATCH_PER, "ms", zbatch),
                Measurement(f"{FLOOR_BATCH}, per child", "ms",
                            [v / n_batch for v in floor_batch] or
                            [parallel_spawn_floor(n_batch) * 1e3 / n_batch]),
                note=f"{n_batch} zygote instances created at once until all READY, divided "
                     f"by {n_batch} (fresh system per repeat)"),
            Row(Measurement(POOL, "ms", pool), floor_m, "value <= 1 ms",
                note=f"median of {n} per repeat; InstanceConfig(prestart=2) handler, pool "
                     "full and READY before each claim; DESIGN §10 target 1 ms"),
        ]
    return rows


def _pool_samples(system: SpearSystem, n: int) -> list[float]:
    cfg = handler_config(prestart=2)
    system.stop_instance(system.create_instance("life-pool", cfg))
    samples = []
    for _ in range(n):
        deadline = time.monotonic() + READY_TIMEOUT
        while True:  # the pool full and READY again (not timed)
            idle = [node for node in system.tree().to_dict()["instances"]
                    if node["idle"] and node["state"] == "ready"]
            if len(idle) >= 2:
                break
            if time.monotonic() > deadline:
                raise TimeoutError("the warm pool did not refill")
            time.sleep(POLL)
        t0 = time.perf_counter()
        iid = system.create_instance("life-pool", cfg)
        system.wait_ready(iid, timeout=READY_TIMEOUT)
        samples.append(time.perf_counter() - t0)
        system.stop_instance(iid)
    return samples


def _zygote(ctx: BenchContext, n: int, n_batch: int, floor: list[float]
            ) -> tuple[list[float], list[float], list[float], list[float], list[float]]:
    import tempfile

    from spear_actors import RestartPolicy

    zcreate: list[float] = []
    zkill: list[float] = []
    zpreload: list[float] = []
    zbatch: list[float] = []
    pool: list[float] = []
    with tempfile.TemporaryDirectory(prefix="spear-bench-") as tmp, running_system() as system:
        with open(os.path.join(tmp, "slow_preload.py"), "w") as f:
            f.write(SLOW_PRELOAD)
        slow = handler_config(preload=("slow_preload",), working_dir=tmp)
        plain = handler_config()
        policy = RestartPolicy(backoff_min=0.0, backoff_max=0.1, jitter=0.0,
                               max_restarts=10_000, window=60.0)
        victim = system.create_instance("zyg-kill", handler_config(restart=policy))
        system.wait_ready(victim, timeout=READY_TIMEOUT)
        _create_samples(system, 1, slow)  # both zygotes warm
        for r in range(ctx.repeats):
            if len(floor) <= r:
                ctx.progress(f"zygote {r + 1}/{ctx.repeats}: floor, {n} starts")
                floor.append(_median(b.spawn_connect_floor(n)) * 1e3)
            ctx.progress(f"zygote {r + 1}/{ctx.repeats}: create → READY, {n} instances")
            zcreate.append(_median(_create_samples(system, n, plain)) * 1e3)
            ctx.progress(f"zygote {r + 1}/{ctx.repeats}: kill -9 → READY, {n} kills")
            zkill.append(_median(_kill_samples(system, victim, n)) * 1e3)
            ctx.progress(f"zygote {r + 1}/{ctx.repeats}: create → READY with preload")
            zpreload.append(_median(_create_samples(system, n, slow)) * 1e3)
            ctx.progress(f"zygote {r + 1}/{ctx.repeats}: warm-pool claims, {n}")
            pool.append(_median(_pool_samples(system, n)) * 1e3)
    for r in range(ctx.repeats):
        ctx.progress(f"zygote {r + 1}/{ctx.repeats}: {n_batch} instances at once")
        zbatch.append(_batch(n_batch, handler_config()) * 1e3 / n_batch)
    return zcreate, zkill, zpreload, zbatch, pool
