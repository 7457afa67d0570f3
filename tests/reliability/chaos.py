"""Chaos under load: a steady stream of requests while a killer disrupts random instances.

Used by ``test_chaos.py`` (about 10 s) and by ``scripts/soak`` (60 s by default); it imports
no pytest. :class:`Chaos` runs three paced threads against a running SpearSystem whose
instances echo:

* the *submitter* sends ``rate`` requests a second (half of them with ``retries=2``), each
  with a unique payload, and checks every answer in the future's done-callback;
* the *killer* every ``kill_interval`` (jittered) picks a serving (READY or BUSY) instance
  and sends its process SIGKILL, SIGTERM, SIGSTOP (left stopped: heartbeat loss must end it)
  or SIGSTOP followed by SIGCONT a moment later (it may or may not survive that);
* the *prober* times ``system.tree()`` every ``tree_interval``.

Afterwards (:meth:`Chaos.run` returns a :class:`ChaosResult`) it checks that every request
ended exactly once (answer correct, or a SpearError that says why), that the restarts match the
disruptions, that ``tree()`` always answered within a second and that every instance came back.
:func:`watch_resolutions` catches a request resolved twice, which the library would otherwise
swallow (it ignores ``InvalidStateError`` so that a caller's cancel cannot hurt it).
"""

from __future__ import annotations

import collections
import contextlib
import os
import random
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import Any

import psutil

from spear_actors import (
    InstanceFailed,
    InstanceState,
    NoInstanceAvailable,
    SpearError,
    SpearSystem,
    TimeoutError,
)

EXPECTED_ERRORS = (InstanceFailed, TimeoutError, NoInstanceAvailable)
"""What a request may end with when its instance is killed under it (echo never fails)."""
TREE_BOUND = 1.0
STOPPED_BOUND = 10.0
"""A process left stopped must be killed (heartbeat loss) within this; it takes the heartbeat
timeout plus a moment, unless the machine is badly overloaded."""


@dataclass(frozen=True)
class ChaosConfig:
    seconds: float = 10.0
    task_id: str = "echo"
    rate: float = 300.0
    """Requests per second, sent in batches of ``batch``."""
    batch: int = 10
    request_timeout: float = 10.0
    kill_interval: float = 0.6
    """Mean pause between disruptions (each pause is 0.5-1.5 times this)."""
    cont_after: float = 0.15
    """SIGSTOP-then-SIGCONT: how long the process stays stopped."""
    tree_interval: float = 0.2
    progress_every: float = 5.0
    seed: int | None = None


@dataclass
class ChaosResult:
    submitted: int = 0
    ok: int = 0
    errors: collections.Counter[str] = field(default_factory=collections.Counter)
    wrong_answers: list[str] = field(default_factory=list)
    unexpected_errors: list[str] = field(default_factory=list)
    double_resolutions: list[str] = field(default_factory=list)
    never_done: int = 0
    signals: collections.Counter[str] = field(default_factory=collections.Counter)
    disrupted: int = 0
    """Distinct live processes hit by SIGKILL, SIGTERM or a SIGSTOP left in place."""
    paused: int = 0
    """Distinct processes stopped and continued again."""
    restarts: int = 0
    failed_instances: list[str] = field(default_factory=list)
    tree_calls: int = 0
    tree_worst: float = 0.0
    tree_slow: list[float] = field(default_factory=list)
    tree_errors: list[str] = field(default_factory=list)
    dead_services: list[str] = field(default_factory=list)
    not_back: list[str] = field(default_factory=list)
    undetected: list[int] = field(default_factory=list)
    """Pids left stopped that heartbeat loss did not end."""
    duration: float = 0.0

    @property
    def ended(self) -> int:
        return self.ok + sum(self.errors.values())

    def violations(self) -> list[str]:
        """Every broken invariant, in words (empty: all held)."""
        found = []
        if self.never_done:
            found.append(f"{self.never_done} requests never ended")
        if self.ended != self.submitted:
            found.append(f"{self.ended} requests ended but {self.submitted} were submitted")
        if self.wrong_answers:
            found.append(f"wrong answers: {self.wrong_answers[:5]}")
        if self.unexpected_errors:
            found.append(f"unexpected errors: {self.unexpected_errors[:5]}")
        if self.double_resolutions:
            found.append(f"requests resolved twice: {self.double_resolutions[:5]}")
        if self.restarts < self.disrupted:
            found.append(f"{self.restarts} restarts for {self.disrupted} disrupted processes")
        # every disruption (and perhaps each pause) is one restart; a few more may come from
        # heartbeat timeouts on a loaded machine, but not one restart storm per kill
        ceiling = 2 * (self.disrupted + self.paused) + 5
        if self.restarts > ceiling:
            found.append(f"{self.restarts} restarts for {self.disrupted} disruptions and "
                         f"{self.paused} pauses (more than {ceiling})")
        if self.failed_instances:
            found.append(f"instances FAILED: {self.failed_instances}")
        if self.tree_slow or self.tree_errors:
            found.append(f"tree() slower than {TREE_BOUND} s: {self.tree_slow[:5]}, "
                         f"errors {self.tree_errors[:3]}")
        if self.dead_services:
            found.append(f"dead services: {self.dead_services}")
        if self.undetected:
            found.append(f"stopped processes never killed: {self.undetected}")
        if self.not_back:
            found.append(f"instances not serving again: {self.not_back}")
        if self.ok == 0:
            found.append("no request succeeded at all")
        return found

    def summary(self) -> str:
        errors = ", ".join(f"{k} {v}" for k, v in sorted(self.errors.items())) or "none"
        signals = ", ".join(f"{k} {v}" for k, v in sorted(self.signals.items())) or "none"
        return (f"{self.duration:.1f} s: {self.submitted} requests, {self.ok} answered, "
                f"errors: {errors}; signals: {signals}; disrupted {self.disrupted}, paused "
                f"{self.paused}, restarts {self.restarts}; tree() {self.tree_calls} calls, "
                f"worst {self.tree_worst * 1000:.0f} ms")


@contextlib.contextmanager
def watch_resolutions(found: list[str]) -> Iterator[None]:
    """Record in ``found`` any attempt to resolve an already resolved request.

    Requests are resolved through ``dataplane.resolve_future``/``fail_future`` (imported
    by every module that ends requests), which swallow ``InvalidStateError``; these
    stand-ins do the same but note each such attempt on a future nobody cancelled (our
    requests are never cancelled).
    """
    from spear_actors.actors import dataplane, intake, servicetree, tasks

    modules = [m for m in (dataplane, intake, servicetree, tasks)
               if hasattr(m, "resolve_future") or hasattr(m, "fail_future")]
    originals = [(m, getattr(m, "resolve_future", None), getattr(m, "fail_future", None))
                 for m in modules]

    def resolve(future: Future[bytes], data: bytes) -> None:
        try:
            future.set_result(data)
        except InvalidStateError:
            if not future.cancelled():
                found.append(f"result after {_outcome(future)}")

    def fail(future: Future[bytes], error: BaseException) -> None:
        try:
            future.set_exception(error)
        except InvalidStateError:
            if not future.cancelled():
                found.append(f"{error!r} after {_outcome(future)}")

    for module, had_resolve, had_fail in originals:
        if had_resolve is not None:
            module.resolve_future = resolve  # type: ignore[attr-defined]
        if had_fail is not None:
            module.fail_future = fail  # type: ignore[attr-defined]
    try:
        yield
    finally:
        for module, had_resolve, had_fail in originals:
            if had_resolve is not None:
                module.resolve_future = had_resolve  # type: ignore[attr-defined]
            if had_fail is not None:
                module.fail_future = had_fail  # type: ignore[attr-defined]


def _outcome(future: Future[bytes]) -> str:
    error = future.exception(0)
    return "a result" if error is None else repr(error)


class Chaos:
    """See the module docstring. ``report`` receives progress lines (e.g. ``print``)."""

    def __init__(self, system: SpearSystem, config: ChaosConfig,
                 report: Callable[[str], None] | None = None) -> None:
        self.system = system
        self.config = config
        self.report = report
        self.result = ChaosResult()
        seeds = random.Random(config.seed)
        self._submit_seed, self._kill_seed = seeds.random(), seeds.random()
        self._lock = threading.Lock()
        self._outstanding: set[Future[bytes]] = set()
        self._stop = threading.Event()
        self._hit: set[int] = set()  # pids disrupted for good
        self._paused: set[int] = set()
        self._left_stopped: list[psutil.Process] = []
        self._restarts_before = 0

    # -- the run -------------------------------------------------------------------------------
    def run(self) -> ChaosResult:
        cfg = self.config
        result = self.result
        self._restarts_before = self.system.metrics()["restarts"]
        started = time.monotonic()
        threads = [threading.Thread(target=self._guard(fn), name=f"chaos-{fn.__name__}",
                                    daemon=True)
                   for fn in (self._submitter, self._killer, self._prober)]
        with watch_resolutions(result.double_resolutions):
            for thread in threads:
                thread.start()
            end = started + cfg.seconds
            next_report = started + cfg.progress_every
            while (now := time.monotonic()) < end:
                if self._stop.wait(min(end, next_report) - now):  # pacing; set: a thread died
                    break
                if self.report is not None and time.monotonic() >= next_report:
                    next_report += cfg.progress_every
                    self.report(self._progress(time.monotonic() - started))
            self._stop.set()
            for thread in threads:
                thread.join(cfg.request_timeout)
            self._await_stopped()
            self._settle()
        result.duration = time.monotonic() - started
        return result

    def _guard(self, fn: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                fn()
            except Exception as exc:  # a broken chaos thread must not pass for a clean run
                self.result.unexpected_errors.append(f"{fn.__name__} thread died: {exc!r}")
                self._stop.set()
        run.__name__ = fn.__name__
        return run

    def _progress(self, elapsed: float) -> str:
        with self._lock:
            r = self.result
            outstanding = len(self._outstanding)
            errors = sum(r.errors.values())
            return (f"[{elapsed:5.1f} s] submitted {r.submitted}, answered {r.ok}, errors "
                    f"{errors}, in flight {outstanding}, disrupted {len(self._hit)}, paused "
                    f"{len(self._paused)}, tree worst {r.tree_worst * 1000:.0f} ms")

    # -- submitter -----------------------------------------------------------------------------
    def _submitter(self) -> None:
        cfg = self.config
        rng = random.Random(self._submit_seed)
        period = cfg.batch / cfg.rate
        seq = 0
        next_at = time.monotonic()
        while not self._stop.is_set():
            for _ in range(cfg.batch):
                seq += 1
                data = seq.to_bytes(8, "big") + os.urandom(rng.randrange(0, 48))
                retries = 2 if seq % 2 else 0
                future = self.system.submit(cfg.task_id, data, timeout=cfg.request_timeout,
                                            retries=retries)
                with self._lock:
                    self.result.submitted += 1
                    self._outstanding.add(future)
                future.add_done_callback(self._checker(data))
            next_at += period
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    def _checker(self, expected: bytes) -> Callable[[Future[bytes]], None]:
        def done(future: Future[bytes]) -> None:  # runs in whichever thread resolved it
            error = future.exception(0)
            with self._lock:
                self._outstanding.discard(future)
                r = self.result
                if error is None:
                    answer = future.result(0)
                    if answer == expected:
                        r.ok += 1
                    else:
                        r.errors["WrongAnswer"] += 1
                        r.wrong_answers.append(f"{answer[:12]!r} for {expected[:12]!r}")
                else:
                    r.errors[type(error).__name__] += 1
                    if not isinstance(error, EXPECTED_ERRORS):
                        r.unexpected_errors.append(repr(error))
        return done

    # -- killer --------------------------------------------------------------------------------
    def _killer(self) -> None:
        cfg = self.config
        rng = random.Random(self._kill_seed)
        actions: list[str] = []
        while not self._stop.wait(cfg.kill_interval * rng.uniform(0.5, 1.5)):
            target = self._pick_victim(rng)
            if target is None:
                continue
            if not actions:  # every kind once per round, in random order
                actions = ["SIGKILL", "SIGTERM", "SIGSTOP", "SIGSTOP+SIGCONT"]
                rng.shuffle(actions)
            action = actions.pop()
            try:
                if action == "SIGSTOP+SIGCONT":
                    target.send_signal(signal.SIGSTOP)
                    self._paused.add(target.pid)
                    self._stop.wait(cfg.cont_after)  # pacing: how long it stays stopped
                    target.send_signal(signal.SIGCONT)
                else:
                    target.send_signal(getattr(signal, action))
                    self._hit.add(target.pid)
                    if action == "SIGSTOP":
                        self._left_stopped.append(target)
            except psutil.Error:
                continue  # it went meanwhile: not a hit
            with self._lock:
                self.result.signals[action] += 1

    def _pick_victim(self, rng: random.Random) -> psutil.Process | None:
        """A serving instance's live process that we have not disrupted yet (or None)."""
        try:
            infos = self.system.instances(self.config.task_id)
        except SpearError:
            return None
        candidates = [i for i in infos if i.state.is_serving and i.pid
                      and i.pid not in self._hit]
        rng.shuffle(candidates)
        for info in candidates:
            assert info.pid is not None
            try:
                proc = psutil.Process(info.pid)
                # ours, and running: a signal to it is a real disruption
                if proc.ppid() == os.getpid() and proc.status() not in (
                        psutil.STATUS_ZOMBIE, psutil.STATUS_STOPPED, psutil.STATUS_DEAD):
                    return proc
            except psutil.Error:
                continue
        return None

    def _await_stopped(self) -> None:
        """Processes left stopped must be found out by heartbeat loss and killed; one still
        there after a generous bound is a violation (and gets SIGCONT, to end cleanly)."""
        deadline = time.monotonic() + STOPPED_BOUND
        waiting = list(self._left_stopped)
        while waiting and time.monotonic() < deadline:
            waiting = [p for p in waiting if _running(p)]
            time.sleep(0.05)  # polling, bounded (psutil's wait() would reap our children)
        for proc in waiting:
            self.result.undetected.append(proc.pid)
            with contextlib.suppress(psutil.Error):
                proc.send_signal(signal.SIGCONT)

    # -- prober --------------------------------------------------------------------------------
    def _prober(self) -> None:
        while not self._stop.wait(self.config.tree_interval):
            self._probe_tree()

    def _probe_tree(self) -> None:
        started = time.monotonic()
        try:
            tree = self.system.tree()
        except SpearError as exc:
            self.result.tree_errors.append(repr(exc))
            return
        took = time.monotonic() - started
        r = self.result
        r.tree_calls += 1
        r.tree_worst = max(r.tree_worst, took)
        if took > TREE_BOUND:
            r.tree_slow.append(round(took, 3))
        dead = [name for name, alive in tree.services.items() if not alive]
        if dead:
            r.dead_services = dead

    # -- afterwards ----------------------------------------------------------------------------
    def _settle(self) -> None:
        """Wait (bounded) for every request to end and every instance to serve again."""
        cfg = self.config
        r = self.result
        r.disrupted = len(self._hit)
        r.paused = len(self._paused - self._hit)
        deadline = time.monotonic() + cfg.request_timeout + 10.0
        while self._outstanding and time.monotonic() < deadline:
            time.sleep(0.05)
        with self._lock:
            r.never_done = len(self._outstanding)
        # every disruption has to turn into a restart; the last ones take a moment
        while time.monotonic() < deadline:
            r.restarts = self.system.metrics()["restarts"] - self._restarts_before
            if r.restarts >= r.disrupted and self._all_serving():
                break
            time.sleep(0.05)
        r.restarts = self.system.metrics()["restarts"] - self._restarts_before
        infos = self.system.instances(cfg.task_id)
        r.failed_instances = [i.id for i in infos if i.state is InstanceState.FAILED]
        for info in infos:
            data = f"back-{info.id}".encode()
            try:
                if self.system.execute(info.id, data, timeout=10) != data:
                    r.not_back.append(f"{info.id}: wrong answer")
            except SpearError as exc:
                r.not_back.append(f"{info.id}: {exc!r}")
        self._probe_tree()

    def _all_serving(self) -> bool:
        return all(i.state.is_serving for i in self.system.instances(self.config.task_id))


def _running(proc: psutil.Process) -> bool:
    """Not yet dead (a zombie counts as dead: it only waits for the watcher to reap it)."""
    try:
        return proc.status() not in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)
    except psutil.Error:
        return False


def process_usage() -> dict[str, Any]:
    """This process's RSS (bytes), thread count and open file descriptors."""
    me = psutil.Process()
    return {"rss": me.memory_info().rss, "threads": threading.active_count(),
            "fds": me.num_fds()}
