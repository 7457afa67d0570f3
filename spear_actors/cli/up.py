"""``spear-actors up``: run a system from a TOML file until a signal stops it.

Everything here runs in the main thread. :func:`cmd_up` loads the TOML file (refusing a bad
one with exit code 2 before anything starts), starts the system and the control endpoint,
launches every task's instances (:func:`launch`, a bounded wait until all are READY), then
shows a live status line, or a periodic log line when stderr is not a terminal
(:func:`watch`), or the interactive console (``--repl``). When a signal asks for it (see
:mod:`.signals`) or the console is left, it stops every instance within
:func:`stop_budget`, kills and reaps whatever outlived that, and returns the exit code.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import TYPE_CHECKING

from ..errors import ConfigError, SpearError
from ..logging_setup import LEVELS, setup_logging
from .console import EXIT_FORCED, EXIT_USAGE, Console, duration, fail
from .registry import command
from .repl import run_repl
from .signals import Signals, Terminate, kill_descendants

if TYPE_CHECKING:
    from ..control import ControlServer
    from ..system import SpearSystem
    from ..tomlconfig import SpearFile

__all__ = ["DEFAULT_CONFIG", "STATUS_LOG_EVERY", "cmd_up", "launch", "stop_budget", "watch"]

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
    parser.add_argument("--log-json", action="store_true", help="log JSON lines to stderr")
    parser.add_argument("--demo", action="store_true",
                        help="self-contained demonstration (3 echo instances), no config needed")
    parser.add_argument("--run-dir", metavar="DIR", help="where the control run file goes")


def _load_config(path: str | None) -> SpearFile:
    from .. import tomlconfig

    if path is None and os.path.exists(DEFAULT_CONFIG):
        path = DEFAULT_CONFIG
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
                  status=console.live)  # log lines print above the live line
    try:
        spec = _load_config(args.config)
    except ConfigError as exc:
        return fail(f"config error: {exc}", EXIT_USAGE)
    from ..control import ControlServer, claim_run_dir, resolve_run_dir
    from ..process import set_child_subreaper
    from ..system import SpearSystem

    try:
        run_dir = claim_run_dir(resolve_run_dir(args.run_dir))
    except SpearError as exc:
        return fail(str(exc))
    set_child_subreaper()
    signals = Signals(quiet=args.log_json)
    signals.install(sigint=not args.repl)
    try:
        system = SpearSystem.start(spec.system)
    except SpearError as exc:
        return fail(f"cannot start: {exc}")
    control: ControlServer | None = None
    try:
        control = ControlServer(system, run_dir)
        signals.on_force.append(control.remove_run_file)
        info = control.start()
        if not spec.tasks:
            console.line(f"{spec.source}: no tasks configured; the system is empty (create "
                         "instances from --repl or through spear_actors.attach())")
        launch(system, spec, console, signals)
        signals.in_repl = args.repl  # from now on SIGTERM leaves the console
        if signals.requested.is_set():
            return 0
        if args.repl:
            run_repl(system, info.path, info.endpoint)
        else:
            watch(system, console, signals)
        return 0
    except SpearError as exc:
        console.clear()
        return fail(str(exc))
    except (KeyboardInterrupt, Terminate):  # Ctrl-C before the --repl console was up
        return 0
    finally:
        signals.in_repl = False
        signals.shutting_down()
        console.clear()
        if control is not None:
            control.close()
        why = f"{signals.received}: " if signals.received else ""
        hint = " (Ctrl-C again to force)" if sys.stdin.isatty() else ""
        console.line(f"{why}stopping every instance ...{hint}")
        system.shutdown(timeout=stop_budget(spec))
        _reap_leftovers()
        console.line("spear-actors stopped")


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
    while not signals.requested.is_set():
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
        signals.requested.wait(0.05)


def _status_text(system: SpearSystem, started: float) -> str:
    infos = system.instances()
    metrics = system.metrics()
    ready = sum(i.state.is_serving for i in infos)
    failed = sum(i.state.name == "FAILED" for i in infos)
    text = (f"{ready}/{len(infos)} instances ready | "
            f"{metrics['throughput']['executes_per_s']:,.1f} req/s | "
            f"{metrics['restarts']} restarts | up {duration(time.monotonic() - started)}")
    return text + (f" | {failed} FAILED" if failed else "")


def watch(system: SpearSystem, console: Console, signals: Signals) -> None:
    """Refresh the status line about once a second until a signal asks us to stop."""
    from .._log import logger

    started = time.monotonic()
    last_log = started - STATUS_LOG_EVERY  # the first line at once
    while True:
        try:
            text = _status_text(system, started)
        except SpearError as exc:
            logger.warning("status unavailable: {}", exc)
            text = None
        if text is not None and console.live is not None:
            console.show(text)
        elif text is not None and time.monotonic() - last_log >= STATUS_LOG_EVERY:
            last_log = time.monotonic()
            logger.info("status: {}", text)
        if signals.requested.wait(1.0):
            return


def _reap_leftovers() -> None:
    """After the graceful shutdown: kill and reap whatever still runs below us (a process
    that outlived its stop, an orphan that came to us as subreaper). Main thread."""
    import psutil

    from .._log import logger

    try:
        leftovers = psutil.Process().children(recursive=True)
    except psutil.Error:
        return
    if kill_descendants():
        logger.warning("{} process(es) outlived the shutdown: killed", len(leftovers))
    for child in psutil.Process().children():
        try:
            child.wait(timeout=2)  # our own children: reap them
        except (psutil.Error, psutil.TimeoutExpired):
            continue


def _demo(args: argparse.Namespace) -> int:
    from ..demo import run_demo

    # the demo keeps its output clean: warnings (the supervisor's restart shows), no chatter
    setup_logging(args.log_level or "WARNING", json=args.log_json,
                  instance_output=args.log_level is not None)
    try:
        run_demo()
    except KeyboardInterrupt:
        return fail("demo interrupted", EXIT_FORCED)
    except SpearError as exc:
        return fail(f"demo failed: {exc}")
    return 0
