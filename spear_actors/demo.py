"""``spear-actors up --demo``: a self-contained tour that needs no configuration.

Starts a system with three echo handler instances (``entry``: forked from a zygote), sends
a burst of requests and checks every answer, kills one instance with SIGKILL to show its
supervisor replacing it, crashes the ConnectionActor (a drill, ``inject_crash``) to show the
root restarting it while every instance keeps its process, then prints the supervision tree
and a metrics summary. Runs in the caller's (main) thread; the request futures complete in
the system's threads. Any failure raises :class:`DemoFailed`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from concurrent.futures import Future
from typing import Any, TextIO

from .config import InstanceConfig, SystemConfig
from .errors import SpearError
from .logging_setup import StatusLine
from .records import InstanceInfo

__all__ = ["DemoFailed", "run_demo"]

TASK = "echo"


class DemoFailed(SpearError):
    """Something the demo checks did not hold."""


class _Progress:
    """Progress on stderr: redrawn in place on a terminal, one final line otherwise."""

    def __init__(self, stream: TextIO) -> None:
        self._live = StatusLine(stream) if stream.isatty() else None
        self._stream = stream

    def show(self, text: str) -> None:
        if self._live is not None:
            self._live.set(text)

    def done(self, text: str) -> None:
        if self._live is not None:
            self._live.clear()
        self._stream.write(text + "\n")
        self._stream.flush()


def _bar(done: int, total: int, width: int = 30) -> str:
    filled = width * done // max(1, total)
    return f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total}"


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.2f} ms"


def run_demo(instances: int = 3, requests: int = 5000, *, out: TextIO | None = None,
             err: TextIO | None = None, metrics_port: int | None = None) -> None:
    """Run the tour, printing the story to ``out`` and progress to ``err``; with
    ``metrics_port``, serve Prometheus metrics on 127.0.0.1 meanwhile."""
    from .system import SpearSystem  # pykka & co. only when the demo really runs

    out = out if out is not None else sys.stdout
    err = err if err is not None else sys.stderr
    progress = _Progress(err)

    def say(text: str = "") -> None:
        out.write(text + "\n")
        out.flush()

    started = time.perf_counter()
    with SpearSystem.start(SystemConfig()) as system, contextlib.ExitStack() as stack:
        say(f"spear-actors demo: system listening on {system.endpoint}")
        if metrics_port is not None:
            from .exporter import start_exporter

            exporter = start_exporter(system, metrics_port)
            stack.callback(exporter.close)
            say(f"  Prometheus metrics at {exporter.url}")
        # handler instances (DESIGN.md section 10): forked from a zygote that imported the
        # client once, so starting and restarting them costs milliseconds, not an interpreter
        config = InstanceConfig(entry="spear_actors.examples.echo:echo", prefetch=64)
        t0 = time.perf_counter()
        ids = [system.create_instance(TASK, config) for _ in range(instances)]
        infos = _wait_all_ready(system, ids, progress, timeout=config.startup_timeout)
        progress.done(f"{len(ids)}/{len(ids)} ready")
        pids = ", ".join(f"{i.id} pid {i.pid}" for i in infos)
        say(f"  started {len(ids)} echo handler instances (forked from a zygote) in "
            f"{time.perf_counter() - t0:.2f} s ({pids})")

        elapsed = _burst(system, requests, progress)
        say(f"  {requests} requests answered in {elapsed:.2f} s "
            f"({requests / elapsed:,.0f} req/s); every answer checked")

        victim = system.instance(ids[min(1, len(ids) - 1)])
        new, restart_s = _kill_and_wait(system, victim)
        say(f"  killed {victim.id} (pid {victim.pid}) with SIGKILL: its supervisor restarted "
            f"it as pid {new.pid}, READY again {restart_s * 1000:.0f} ms after the kill "
            f"(restarts: {new.restarts})")
        probe = b"still serving?"
        if system.execute(victim.id, probe, method="echo", timeout=10) != probe:
            raise DemoFailed(f"{victim.id} answered wrongly after its restart")

        back_s = _crash_connection_and_wait(system, ids)
        say(f"  crashed the ConnectionActor (a drill): the root restarted it and all "
            f"{len(ids)} instances authenticated again {back_s * 1000:.0f} ms later, "
            "same pids, no instance restarted")

        say()
        say(repr(system.tree()))
        say()
        _summary(say, _settled_metrics(system, requests + 1), requests / elapsed)
    say(f"demo finished in {time.perf_counter() - started:.1f} s; all instances stopped")


def _wait_all_ready(system: Any, ids: list[str], progress: _Progress, timeout: float
                    ) -> list[InstanceInfo]:
    deadline = time.monotonic() + timeout
    while True:
        infos = [i for i in system.instances(TASK) if i.id in ids]
        ready = [i for i in infos if i.state.is_serving]
        progress.show(f"starting {len(ids)} echo instances ... {len(ready)}/{len(ids)} ready")
        if len(ready) == len(ids):
            return ready
        failed = [i for i in infos if i.state.is_final]
        if failed:
            raise DemoFailed(f"instance {failed[0].id} is {failed[0].state.name}: "
                             f"{failed[0].last_error}")
        if time.monotonic() > deadline:
            raise DemoFailed(f"only {len(ready)}/{len(ids)} instances READY after {timeout} s")
        time.sleep(0.02)


def _burst(system: Any, n: int, progress: _Progress) -> float:
    """Submit ``n`` distinct requests at once; wait for and check every answer."""
    payloads = [b"request %d" % i for i in range(n)]
    finished = threading.Semaphore(0)
    counter = [0]
    lock = threading.Lock()

    def on_done(_: Future[bytes]) -> None:
        with lock:
            counter[0] += 1
            if counter[0] == n:
                finished.release()

    t0 = time.perf_counter()
    futures = [system.submit(TASK, p, method="echo", timeout=30) for p in payloads]
    for future in futures:
        future.add_done_callback(on_done)
    deadline = time.monotonic() + 40
    while not finished.acquire(timeout=0.1):
        progress.show(f"burst {_bar(counter[0], n)}")
        if time.monotonic() > deadline:
            raise DemoFailed(f"only {counter[0]}/{n} requests answered after 40 s")
    elapsed = time.perf_counter() - t0
    progress.done(f"burst {_bar(n, n)} in {elapsed:.2f} s")
    wrong = errors = 0
    first_error: BaseException | None = None
    for payload, future in zip(payloads, futures, strict=True):
        exc = future.exception()
        if exc is not None:
            errors += 1
            first_error = first_error or exc
        elif future.result() != payload:
            wrong += 1
    if errors or wrong:
        raise DemoFailed(f"{errors} requests failed and {wrong} got a wrong answer "
                         f"(first error: {first_error!r})")
    return elapsed


def _crash_connection_and_wait(system: Any, ids: list[str]) -> float:
    """``inject_crash("connection")``; the time until every instance is READY again on a
    new connection with its old pid (DemoFailed if one was restarted instead)."""
    before = {info.id: info for info in system.instances()}
    crashed_at = time.monotonic()
    system.inject_crash("connection")
    deadline = crashed_at + 15
    while True:
        now = {info.id: info for info in system.instances()}
        if any(now[i].pid != before[i].pid for i in ids):
            raise DemoFailed("an instance was restarted by a ConnectionActor restart")
        if all(now[i].state.is_serving and now[i].connection_id != before[i].connection_id
               for i in ids):
            return time.monotonic() - crashed_at
        if time.monotonic() > deadline:
            raise DemoFailed("instances not READY again 15 s after the ConnectionActor "
                             "restart")
        time.sleep(0.005)


def _kill_and_wait(system: Any, victim: InstanceInfo) -> tuple[InstanceInfo, float]:
    """SIGKILL ``victim``; return its replacement's info and the kill -> READY time."""
    if victim.pid is None:
        raise DemoFailed(f"{victim.id} has no pid")
    killed_at = time.time()
    os.kill(victim.pid, signal.SIGKILL)
    deadline = time.monotonic() + 15
    while True:
        info: InstanceInfo = system.instance(victim.id)
        if info.state.is_serving and info.pid not in (None, victim.pid):
            break
        if info.state.is_final:
            raise DemoFailed(f"{victim.id} was not restarted: {info.state.name}, "
                             f"{info.last_error}")
        if time.monotonic() > deadline:
            raise DemoFailed(f"{victim.id} not READY again 15 s after SIGKILL "
                             f"(it is {info.state.name})")
        time.sleep(0.005)
    ready_at = time.time()
    for event in system.events(limit=50, kinds={"InstanceReady"}):
        if event.data.get("instance_id") == victim.id and event.data.get("pid") == info.pid:
            ready_at = event.time  # when it happened, not when we noticed
    return info, ready_at - killed_at


def _settled_metrics(system: Any, executes: int) -> dict[str, Any]:
    """Metrics once the batched latency records have caught up (bounded wait)."""
    deadline = time.monotonic() + 3
    while True:
        metrics: dict[str, Any] = system.metrics()
        if metrics["execute_latency"]["count"] >= executes or time.monotonic() > deadline:
            return metrics
        time.sleep(0.05)


def _summary(say: Any, metrics: dict[str, Any], burst_rate: float) -> None:
    latency = metrics["execute_latency"]
    connections = metrics["connection_totals"]
    totals = metrics["messages"]["total"]
    errors = ", ".join(f"{n} {code}" for code, n in sorted(metrics.get("errors", {}).items()))
    say("metrics")
    say(f"  requests     {latency['count']} executed; connection errors: {errors or 'none'}")
    say(f"  throughput   {burst_rate:,.0f} req/s during the burst")
    say(f"  latency      p50 {_ms(latency['p50'])}, p99 {_ms(latency['p99'])}, "
        f"max {_ms(latency['max'])} (submit to answer; the burst queues)")
    say(f"  restarts     {metrics['restarts']}")
    say(f"  connections  {connections['active']} active, {connections['total_opened']} "
        f"opened, {connections['total_closed']} closed, {metrics['auth_failures']} "
        "auth failures")
    say(f"  messages     {totals['in_count']} in ({totals['in_bytes'] / 1024:.0f} KiB), "
        f"{totals['out_count']} out ({totals['out_bytes'] / 1024:.0f} KiB)")
