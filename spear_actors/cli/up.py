"""``spear-actors up``: run a system from a TOML file until a signal stops it.

:func:`cmd_up` runs in the main thread: it loads the TOML file (refusing a bad one with exit
code 2 before anything starts), starts the system and the control endpoint, launches every
task's instances (:func:`launch`, a bounded wait until all are READY), then waits in
:func:`watch`, showing a live status line (a periodic log line when stderr is not a
terminal), or runs the interactive console (``--repl``). It stops when a SIGINT/SIGTERM asks
for it (see :mod:`.signals`), when the console is left, or when the system fails
(:attr:`SpearSystem.failure`: the reason is printed and ``up`` exits 1), or when
``spear-actors shutdown`` asks. SIGHUP rereads the config file (:class:`~spear_actors.reload.
Reloader`, the same as ``spear-actors reload``); a broken file is reported and changes
nothing. :func:`spear_actors.cli.shutdown.shut_down` then stops everything.

Threads: the main thread does all of the above. A daemon thread (``spear-up-failure``) only
waits for the system's failure and wakes the waiting loop at once. Under ``--repl`` the
waiting loop (without status line) runs in a daemon thread (``spear-up-warden``), which
reports the signals and, should the system fail, makes the main thread leave the console.
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from typing import TYPE_CHECKING

from ..errors import ConfigError, SpearError
from ..logging_setup import LEVELS, setup_logging
from .console import (
    EXIT_FAILURE,
    EXIT_FORCED,
    EXIT_OK,
    EXIT_USAGE,
    Console,
    duration,
    fail,
)
from .registry import command
from .repl import run_repl
from .shutdown import shut_down
from .signals import Signals, Terminate

if TYPE_CHECKING:
    from ..control import ControlServer, RunInfo
    from ..exporter import Exporter
    from ..reload import Reloader
    from ..system import SpearSystem
    from ..tomlconfig import SpearFile

__all__ = ["DEFAULT_CONFIG", "STATUS_LOG_EVERY", "cmd_up", "launch", "report_signals",
           "stop_budget", "watch"]

STATUS_LOG_EVERY = 30.0
"""Seconds between status log lines when stderr is not a terminal."""
DEFAULT_CONFIG = "spear.toml"


def _up_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", metavar="FILE",
                        help=f"TOML configuration (default: ./{DEFAULT_CONFIG} if present)")
    parser.add_argument("--repl", action="store_true",
                        help="interactive Python console with `system` bound")
    parser.add_argument("--log-level", type=str.upper, choices=LEVELS, metavar="LEVEL",
                        help="TRACE..CRITICAL (default INFO; WARNING with --repl or --demo)")
    parser.add_argument("--log-json", action="store_true",
                        help="log one compact JSON object per line to stderr")
    parser.add_argument("--metrics-port", type=int, metavar="PORT",
                        help="serve Prometheus metrics on 127.0.0.1:PORT/metrics (needs "
                             "spear-actors[prometheus]; [monitoring] metrics_port in TOML)")
    parser.add_argument("--demo", action="store_true",
                        help="self-contained demonstration (3 echo instances), no config needed")
    parser.add_argument("--run-dir", metavar="DIR", help="where the control run file goes")


def _config_path(path: str | None) -> str | None:
    """The absolute path of the file to load (relative to the caller's directory)."""
    if path is None and os.path.exists(DEFAULT_CONFIG):
        path = DEFAULT_CONFIG
    return os.path.abspath(path) if path is not None else None


def _load_config(path: str | None) -> SpearFile:
    from .. import tomlconfig

    if path is None:
        return tomlconfig.parse("", "(no --config and no ./spear.toml)")
    return tomlconfig.load(path)


@command("up", "start the system (from a TOML file) and keep it up", _up_options,
         attached=False)
def cmd_up(args: argparse.Namespace) -> int:
    if args.demo:
        return _demo(args)
    console = Console(json_logs=args.log_json)
    setup_logging(args.log_level or ("WARNING" if args.repl else "INFO"), json=args.log_json,
                  status=console.live, stream=console.err)  # above the live line, if any
    from ..control import ControlServer, RemoteAccess, claim_run_dir, resolve_run_dir

    config_path = _config_path(args.config)
    try:
        spec = _load_config(config_path)
        metrics_port = _metrics_port(args, spec)
        remote = (RemoteAccess.load(spec.control)
                  if spec.control is not None and spec.control.curve else None)
    except ConfigError as exc:
        return console.fail(f"config error: {exc}", EXIT_USAGE)
    console.line(f"config: {config_path or '(none: an empty system)'}")
    from ..process import set_child_subreaper
    from ..system import SpearSystem

    try:
        run_dir = claim_run_dir(resolve_run_dir(args.run_dir))
    except SpearError as exc:
        return console.fail(str(exc))
    set_child_subreaper()
    signals = Signals(quiet=args.log_json)
    signals.install(sigint=not args.repl)
    try:
        system = SpearSystem.start(spec.system)
    except SpearError as exc:
        return console.fail(f"cannot start: {exc}")
    _relay_failure(system, signals)
    signals.on_force.append(system.kill_cgroups)  # the guardian dies with the other children
    outcome = EXIT_FAILURE
    control: ControlServer | None = None
    exporter: Exporter | None = None
    from ..reload import Reloader

    reloader = Reloader(system, config_path, spec)
    local = spec.control.endpoint if spec.control is not None and remote is None else None
    try:
        control = ControlServer(system, run_dir, bind_endpoint=local, remote=remote,
                                reload=lambda: reloader.reload().as_dict(),
                                shutdown=lambda: signals.request_stop("shutdown command"))
        signals.on_force.append(control.remove_run_file)
        info = control.start()
        if metrics_port is not None:
            from ..exporter import start_exporter

            exporter = start_exporter(system, metrics_port, spec.system.monitoring.metrics_host)
            console.line(f"Prometheus metrics at {exporter.url}")
        if control.remote_endpoint:
            console.line(f"remote control on {control.remote_endpoint} (CURVE)")
        outcome = _serve(args, system, spec, console, signals, info, reloader)
    except SpearError as exc:
        console.clear()
        outcome = _report(system, console, exc)
    except (KeyboardInterrupt, Terminate):  # Ctrl-C before the --repl console was up
        outcome = EXIT_OK
    finally:
        if exporter is not None:
            exporter.close()
        clean = shut_down(system, control, console, signals, budget=stop_budget(spec))
    if not clean or console.lost or signals.output_lost:
        return outcome or EXIT_FAILURE  # the shutdown was complete, but not all of it was said
    return outcome


def _metrics_port(args: argparse.Namespace, spec: SpearFile) -> int | None:
    """The Prometheus port (``--metrics-port`` over ``[monitoring] metrics_port``); raises
    ConfigError at once if it is asked for and prometheus-client is missing."""
    port: int | None = args.metrics_port
    if port is None:
        port = spec.system.monitoring.metrics_port
    elif not 0 <= port < 65536:
        raise ConfigError(f"--metrics-port must be a port number (0..65535), got {port}")
    if port is not None:
        from ..exporter import require_prometheus

        require_prometheus()
    return port


def _serve(args: argparse.Namespace, system: SpearSystem, spec: SpearFile, console: Console,
           signals: Signals, info: RunInfo, reloader: Reloader | None = None) -> int:
    """Launch, then watch (or run the console) until a signal, the console's end or the
    system's failure; returns the exit code."""
    if not spec.tasks:
        console.line(f"{spec.source}: no tasks configured; the system is empty (create "
                     "instances from --repl or through spear_actors.attach())")
    launch(system, spec, console, signals)
    signals.in_repl = args.repl  # from now on SIGTERM leaves the console
    if signals.requested:
        return EXIT_OK
    if args.repl:
        warden = threading.Thread(target=_repl_warden,
                                  args=(system, console, signals, reloader),
                                  name="spear-up-warden", daemon=True)
        warden.start()
        run_repl(system, info.path, info.endpoint)
    else:
        watch(system, console, signals, reloader=reloader)
    failure = system.failure
    if failure is not None:
        console.clear()
        return _report(system, console, failure)
    return EXIT_OK


def _report(system: SpearSystem, console: Console, exc: SpearError) -> int:
    """Print why ``up`` gives up (the system's failure first: it explains the rest)."""
    failure = system.failure
    if failure is not None:
        return console.fail(f"system failed: {failure}")
    return console.fail(str(exc))


def _relay_failure(system: SpearSystem, signals: Signals) -> None:
    """Wake the waiting loop the moment the system escalates (a daemon thread that ends at
    the shutdown): the loop then sees :attr:`SpearSystem.failure`."""
    def relay() -> None:
        while not signals.stopping:
            if system.wait_failed(0.5) is not None:
                signals.poke()
                return

    threading.Thread(target=relay, name="spear-up-failure", daemon=True).start()


def _repl_warden(system: SpearSystem, console: Console, signals: Signals,
                 reloader: Reloader | None) -> None:
    """Under ``--repl`` the main thread reads stdin: this thread reports the signals and,
    should the system fail, takes the main thread out of the console. Daemon thread."""
    watch(system, console, signals, status=False, reloader=reloader)
    if system.failure is not None and not signals.stopping:
        signals.leave_repl()


def stop_budget(spec: SpearFile) -> float:
    """Shutdown deadline: the slowest task's stop_timeout (SIGTERM grace) plus a margin."""
    return max((t.config.stop_timeout for t in spec.tasks), default=5.0) + 5.0


def launch(system: SpearSystem, spec: SpearFile, console: Console, signals: Signals) -> None:
    """Create every task's instances and wait (bounded) until all are READY."""
    total = spec.instance_count
    if not total:
        return
    console.line(f"starting {total} instance{'s' if total > 1 else ''} from {spec.source} ...")
    t0 = time.monotonic()
    ids = []
    for task in spec.tasks:
        for _ in range(task.instances):
            try:
                ids.append(system.create_instance(task.name, task.config, task.limits))
            except SpearError as exc:
                raise SpearError(f"cannot start task {task.name!r}: {exc}") from exc
    limit = max(t.config.startup_timeout for t in spec.tasks) + 5.0
    while True:  # a SIGHUP meanwhile waits for watch(): the first config is not applied yet
        if signals.stopping:
            return
        if system.failure is not None:
            raise system.failure
        infos = [i for i in system.instances() if i.id in ids]
        ready = sum(i.state.is_serving for i in infos)
        console.show(f"starting {total} instances ... {ready}/{total} ready")
        if ready == total:
            console.clear()
            console.line(f"{ready}/{total} instances ready in {time.monotonic() - t0:.2f} s")
            return
        failed = [i for i in infos if i.state.is_final]
        if failed:
            raise SpearError(f"instance {failed[0].id} is {failed[0].state.name}: "
                             f"{failed[0].last_error or 'no error recorded'}")
        if time.monotonic() - t0 > limit:
            late = ", ".join(f"{i.id} ({i.state.value})" for i in infos if not i.state.is_serving)
            raise SpearError(f"instances not READY after {limit:.0f} s: {late}")
        signals.wait(0.05)


def _status_text(system: SpearSystem, started: float) -> str:
    infos = system.instances()
    metrics = system.metrics()
    ready = sum(i.state.is_serving for i in infos)
    failed = sum(i.state.name == "FAILED" for i in infos)
    text = (f"{ready}/{len(infos)} instances ready | "
            f"{metrics['throughput']['executes_per_s']:,.1f} req/s | "
            f"{metrics['restarts']} restarts | up {duration(time.monotonic() - started)}")
    return text + (f" | {failed} FAILED" if failed else "")


def watch(system: SpearSystem, console: Console, signals: Signals, *,
          status: bool = True, reloader: Reloader | None = None) -> None:
    """Until a signal asks for the shutdown or the system fails: report the signals and, with
    ``status``, refresh the status line about once a second (a log line every
    :data:`STATUS_LOG_EVERY` s when stderr is not a terminal). Main thread (the ``--repl``
    warden thread with ``status=False``)."""
    from .._log import logger

    started = time.monotonic()
    last_log = started - STATUS_LOG_EVERY  # the first line at once
    while True:
        report_signals(signals, reloader)
        if signals.stopping or system.failure is not None:
            return
        if status:
            try:
                text: str | None = _status_text(system, started)
            except SpearError as exc:
                if system.failure is not None:
                    return
                logger.warning("status unavailable: {}", exc)
                text = None
            if text is not None and console.live is not None:
                console.show(text)
            elif text is not None and time.monotonic() - last_log >= STATUS_LOG_EVERY:
                last_log = time.monotonic()
                logger.info("status: {}", text)
        signals.wait(1.0)


def report_signals(signals: Signals, reloader: Reloader | None = None) -> None:
    """Act on what the signal handlers could only count: SIGHUPs reload the config file
    (several at once: one reload). The waiting loop."""
    from .._log import logger

    if not signals.take_hangups():
        return
    if reloader is None:
        logger.warning("received SIGHUP: nothing to reload yet; still running")
        return
    try:
        report = reloader.reload()
    except SpearError as exc:  # ConfigError included: nothing changed
        logger.error("received SIGHUP: reload failed, nothing changed: {}", exc)
        return
    logger.warning("received SIGHUP: {}", report.summary())


def _demo(args: argparse.Namespace) -> int:
    from ..demo import run_demo

    if args.metrics_port is not None:
        from ..exporter import require_prometheus

        try:
            require_prometheus()
        except ConfigError as exc:
            return fail(str(exc), EXIT_USAGE)
    # the demo keeps its output clean: warnings (the supervisor's restart shows), no chatter
    setup_logging(args.log_level or "WARNING", json=args.log_json,
                  instance_output=args.log_level is not None)
    try:
        run_demo(metrics_port=args.metrics_port)
    except KeyboardInterrupt:
        return fail("demo interrupted", EXIT_FORCED)
    except SpearError as exc:
        return fail(f"demo failed: {exc}")
    return 0
