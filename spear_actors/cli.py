"""The ``spear-actors`` command: ``up`` runs a system; the other commands attach to one.

``up`` runs in the main thread: it loads the TOML file (refusing a bad one with exit code 2
before anything starts), starts the system and the control endpoint, launches every task's
instances, then shows a live status line (or a periodic log line when stderr is not a
terminal) or an interactive console (``--repl``). SIGINT/SIGTERM handlers (main thread, as
Python runs them) ask for a graceful shutdown; a second signal SIGKILLs the instances'
process groups and exits 130.

``status``, ``tree``, ``events``, ``metrics``, ``restart`` and ``stop`` talk to a running
``up`` through :func:`spear_actors.control.attach`; they import no pykka.
Exit codes: 0 fine, 1 failure or no system running, 2 bad configuration or usage, 130 forced.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from types import FrameType
from typing import TYPE_CHECKING, Any, NoReturn

from . import __version__
from .errors import ConfigError, SpearError
from .logging_setup import LEVELS, StatusLine, setup_logging

if TYPE_CHECKING:
    from .control import Attached, ControlServer
    from .system import SpearSystem
    from .tomlconfig import SpearFile

__all__ = ["build_parser", "main"]

EXIT_FAILURE, EXIT_USAGE, EXIT_FORCED = 1, 2, 130
STATUS_LOG_EVERY = 30.0
"""Seconds between status log lines when stderr is not a terminal."""
DEFAULT_CONFIG = "spear.toml"


# -- output ----------------------------------------------------------------------------------
class _Console:
    """Progress and status on stderr: a live line on a terminal, plain lines otherwise, log
    records with ``--log-json`` (so stderr stays pure JSON lines). Main thread."""

    def __init__(self, *, json_logs: bool) -> None:
        self.json = json_logs
        self.live = StatusLine(sys.stderr) if sys.stderr.isatty() and not json_logs else None

    def show(self, text: str) -> None:
        """Transient progress (drawn only on a terminal)."""
        if self.live is not None:
            self.live.set(text)

    def line(self, text: str) -> None:
        """A message that stays."""
        if self.json:
            from ._log import logger

            logger.info(text)
        elif self.live is not None:
            self.live.write(text + "\n")
        else:
            sys.stderr.write(text + "\n")
            sys.stderr.flush()

    def clear(self) -> None:
        if self.live is not None:
            self.live.clear()


def _fail(message: str, code: int = EXIT_FAILURE) -> int:
    sys.stderr.write(f"spear-actors: {message}\n")
    sys.stderr.flush()
    return code


# -- signals ---------------------------------------------------------------------------------
class _Terminate(BaseException):
    """Raised in the main thread by SIGTERM to leave the interactive console."""


class _Signals:
    """First SIGINT/SIGTERM: graceful shutdown. SIGINT once shutting down: force it (a repeated
    SIGTERM, as from a service manager plus ``timeout``, leaves the graceful stop running)."""

    def __init__(self, *, quiet: bool = False) -> None:
        self.requested = threading.Event()
        self.received: str | None = None
        """Name of the signal that asked for the shutdown; the main thread reports it."""
        self.quiet = quiet  # no raw writes (stderr carries JSON lines only)
        self.in_repl = False
        self._shutting_down = False
        self.on_force: list[Callable[[], None]] = []

    def install(self, *, sigint: bool = True) -> None:
        signal.signal(signal.SIGTERM, self._handle)
        if sigint:
            signal.signal(signal.SIGINT, self._handle)

    def shutting_down(self) -> None:
        """From now on SIGINT forces the exit."""
        self._shutting_down = True
        self.install()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        # Runs in the main thread between two bytecodes: set flags, never log (loguru's lock
        # may be held by the code we interrupted).
        if self._shutting_down or self.requested.is_set():
            if signum == signal.SIGINT:
                self._force()
            self._say("spear-actors: already shutting down (Ctrl-C to force)\n")
            return
        self.received = signal.Signals(signum).name
        self.requested.set()
        if self.in_repl:
            raise _Terminate()

    def _say(self, text: str) -> None:
        if not self.quiet:
            _raw_write(text)

    def _force(self) -> NoReturn:
        self._say("spear-actors: forced: killing every instance process group\n")
        for callback in self.on_force:
            try:
                callback()
            except Exception:  # the exit must happen whatever fails here
                pass
        _kill_descendants()
        os._exit(EXIT_FORCED)


def _raw_write(text: str) -> None:
    """Unbuffered write, safe from a signal handler interrupting a buffered one."""
    try:
        os.write(2, ("\r\x1b[K" if sys.stderr.isatty() else "").encode() + text.encode())
    except OSError:
        pass


def _kill_descendants() -> int:
    """SIGKILL the process group of every live descendant (instances run in their own
    groups); with the child subreaper set, orphaned grandchildren are among them. Returns how
    many descendants there were."""
    import psutil

    ours = os.getpgrp()
    try:
        children = [c for c in psutil.Process().children(recursive=True)
                    if c.status() != psutil.STATUS_ZOMBIE]
    except psutil.Error:
        return 0
    for child in children:
        try:
            pgid = os.getpgid(child.pid)
            if pgid != ours:
                os.killpg(pgid, signal.SIGKILL)
            else:
                child.kill()
        except (OSError, psutil.Error):
            continue
    return len(children)


def _reap_leftovers() -> None:
    """After the graceful shutdown: kill and reap whatever still runs below us (a process
    that outlived its stop, an orphan that came to us as subreaper). Main thread."""
    import psutil

    from ._log import logger

    try:
        leftovers = psutil.Process().children(recursive=True)
    except psutil.Error:
        return
    if _kill_descendants():
        logger.warning("{} process(es) outlived the shutdown: killed", len(leftovers))
    for child in psutil.Process().children():
        try:
            child.wait(timeout=2)  # our own children: reap them
        except (psutil.Error, psutil.TimeoutExpired):
            continue


# -- up --------------------------------------------------------------------------------------
def _load_config(path: str | None) -> SpearFile:
    from . import tomlconfig

    if path is None and os.path.exists(DEFAULT_CONFIG):
        path = DEFAULT_CONFIG
    if path is None:
        return tomlconfig.parse("", "(no --config and no ./spear.toml)")
    return tomlconfig.load(path)


def cmd_up(args: argparse.Namespace) -> int:
    if args.demo:
        return _demo(args)
    console = _Console(json_logs=args.log_json)
    setup_logging(args.log_level or ("WARNING" if args.repl else "INFO"), json=args.log_json,
                  status=console.live)  # log lines print above the live line
    try:
        spec = _load_config(args.config)
    except ConfigError as exc:
        return _fail(f"config error: {exc}", EXIT_USAGE)
    from .control import ControlServer, claim_run_dir, resolve_run_dir
    from .process import set_child_subreaper
    from .system import SpearSystem

    try:
        run_dir = claim_run_dir(resolve_run_dir(args.run_dir))
    except SpearError as exc:
        return _fail(str(exc))
    set_child_subreaper()
    signals = _Signals(quiet=args.log_json)
    signals.install(sigint=not args.repl)
    try:
        system = SpearSystem.start(spec.system)
    except SpearError as exc:
        return _fail(f"cannot start: {exc}")
    control: ControlServer | None = None
    try:
        control = ControlServer(system, run_dir)
        signals.on_force.append(control.remove_run_file)
        info = control.start()
        if not spec.tasks:
            console.line(f"{spec.source}: no tasks configured; the system is empty (create "
                         "instances from --repl or through spear_actors.attach())")
        _launch(system, spec, console, signals)
        signals.in_repl = args.repl  # from now on SIGTERM leaves the console
        if signals.requested.is_set():
            return 0
        if args.repl:
            _repl(system, info.path, info.endpoint)
        else:
            _watch(system, console, signals)
        return 0
    except SpearError as exc:
        console.clear()
        return _fail(str(exc))
    except (KeyboardInterrupt, _Terminate):  # Ctrl-C before the --repl console was up
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
        system.shutdown(timeout=_stop_budget(spec))
        _reap_leftovers()
        console.line("spear-actors stopped")


def _stop_budget(spec: SpearFile) -> float:
    """Shutdown deadline: the slowest task's stop_timeout (SIGTERM grace) plus a margin."""
    return max((t.config.stop_timeout for t in spec.tasks), default=5.0) + 5.0


def _launch(system: SpearSystem, spec: SpearFile, console: _Console, signals: _Signals) -> None:
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
            f"{metrics['restarts']} restarts | up {_duration(time.monotonic() - started)}")
    return text + (f" | {failed} FAILED" if failed else "")


def _watch(system: SpearSystem, console: _Console, signals: _Signals) -> None:
    """Refresh the status line about once a second until a signal asks us to stop."""
    from ._log import logger

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


def _repl(system: SpearSystem, run_file: str, control_endpoint: str) -> None:
    """``code.interact`` with ``system`` bound; returns when the user leaves (or SIGTERM)."""
    import code

    from . import config, records

    namespace: dict[str, Any] = {
        "system": system, "tree": system.tree, "instances": system.instances,
        "connections": system.connections, "metrics": system.metrics,
        "events": system.events, "execute": system.execute, "submit": system.submit,
        "InstanceConfig": config.InstanceConfig, "ResourceLimits": config.ResourceLimits,
        "RestartPolicy": config.RestartPolicy, "InstanceState": records.InstanceState}
    try:
        import readline
        import rlcompleter

        readline.set_completer(rlcompleter.Completer(namespace).complete)
        readline.parse_and_bind("tab: complete")
    except ImportError:
        pass
    banner = (f"spear-actors {__version__} on {system.endpoint} (control {control_endpoint}, "
              f"run file {run_file})\n"
              "  system.tree()  system.instances()  system.metrics()  system.events(20)\n"
              "  system.execute(task, b'data')  system.restart_instance(id)\n"
              "  also bound: tree, instances, connections, metrics, events, execute, submit\n"
              "Leave with Ctrl-D or exit(): every instance is then stopped.")
    try:
        code.interact(banner=banner, local=namespace, exitmsg="")
    except (SystemExit, _Terminate):
        pass


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    # the demo keeps its output clean: warnings (the supervisor's restart shows), no chatter
    setup_logging(args.log_level or "WARNING", json=args.log_json,
                  instance_output=args.log_level is not None)
    try:
        run_demo()
    except KeyboardInterrupt:
        return _fail("demo interrupted", EXIT_FORCED)
    except SpearError as exc:
        return _fail(f"demo failed: {exc}")
    return 0


# -- commands that attach --------------------------------------------------------------------
def _attach(args: argparse.Namespace) -> Attached:
    from .control import attach

    return attach(args.run_dir, timeout=args.timeout)


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f}s"
    if seconds < 7200:
        return f"{seconds / 60:.1f}m"
    return f"{seconds / 3600:.1f}h"


def cmd_status(args: argparse.Namespace) -> int:
    with _attach(args) as handle:
        infos = handle.instances()
    if args.json:
        from .control import plain

        print(json.dumps(plain(infos), indent=1))
        return 0
    now = time.time()
    rows = [("ID", "TASK", "STATE", "PID", "RESTARTS", "UPTIME")]
    for i in infos:
        rows.append((i.id, i.task_id, i.state.value, str(i.pid or "-"), str(i.restarts),
                     _duration(now - i.started_at) if i.started_at else "-"))
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0


def cmd_tree(args: argparse.Namespace) -> int:
    with _attach(args) as handle:
        tree = handle.tree()
    print(json.dumps(tree.to_dict(), indent=1) if args.json else repr(tree))
    return 0


def _event_line(event: Any, as_json: bool) -> str:
    if as_json:
        return json.dumps({"seq": event.seq, "time": event.time, "kind": event.kind,
                           "data": dict(event.data)})
    when = datetime.fromtimestamp(event.time).strftime("%H:%M:%S.%f")[:-3]
    fields = " ".join(f"{k}={v}" for k, v in event.data.items())
    return f"{event.seq:>6} {when} {event.kind:<20} {fields}".rstrip()


EVENT_KINDS = frozenset({
    "Connected", "Authenticated", "AuthenticationFailed", "Disconnected", "MessageReceived",
    "MessageSent", "HeartbeatTimeout", "Error", "InstanceCreated", "InstanceStarted",
    "InstanceReady", "InstanceExited", "InstanceRestarting", "InstanceFailed",
    "InstanceStopped"})
"""DESIGN.md section 5. ``events`` leaves out the two Message* kinds unless asked."""


def cmd_events(args: argparse.Namespace) -> int:
    kinds: set[str] | None = set(args.kind) if args.kind else None
    if kinds is None and not args.messages:
        kinds = set(EVENT_KINDS - {"MessageReceived", "MessageSent"})
    with _attach(args) as handle:
        newest = handle.events(limit=1)
        last = newest[-1].seq if newest else 0
        for event in handle.events(limit=args.limit, kinds=kinds, since_seq=None):
            print(_event_line(event, args.json), flush=True)
            last = max(last, event.seq)
        if not args.follow:
            return 0
        try:
            while True:
                time.sleep(0.5)
                for event in handle.events(limit=None, kinds=kinds, since_seq=last):
                    print(_event_line(event, args.json), flush=True)
                    last = event.seq
        except KeyboardInterrupt:
            return 0


def cmd_metrics(args: argparse.Namespace) -> int:
    with _attach(args) as handle:
        m = handle.metrics()
    if args.json:
        print(json.dumps(m, indent=1, sort_keys=True))
        return 0
    lat, conns, tp = m["execute_latency"], m["connections"], m["throughput"]

    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v * 1000:.2f} ms"

    print(f"requests     {lat['count']} executed; {tp['executes_per_s']:,.1f}/s over the last "
          f"{tp['window_s']:.0f} s")
    print(f"latency      p50 {ms(lat['p50'])}  p90 {ms(lat['p90'])}  p99 {ms(lat['p99'])}  "
          f"max {ms(lat['max'])}")
    print(f"restarts     {m['restarts']}")
    print(f"connections  {conns['active']} active, {conns['pending']} pending, "
          f"{conns['total_opened']} opened, {conns['total_closed']} closed; "
          f"{m['auth_failures']} auth failures")
    print(f"errors       {json.dumps(m.get('errors', {}))}")
    for iid, sample in sorted(m.get("instances", {}).items()):
        print(f"  {iid}: {json.dumps(sample)}")
    return 0


def cmd_restart(args: argparse.Namespace) -> int:
    with _attach(args) as handle:
        handle.restart_instance(args.instance)
    print(f"restarting {args.instance}")
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    with _attach(args) as handle:
        info = handle.stop_instance(args.instance)
    print(f"{info.id} {info.state.value}")
    return 0


# -- parser and entry point ------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spear-actors", description="Spear node agent: supervised instances over ZeroMQ.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = commands.add_parser("up", help="start the system (from a TOML file) and keep it up")
    up.add_argument("--config", "-c", metavar="FILE",
                    help=f"TOML configuration (default: ./{DEFAULT_CONFIG} if present)")
    up.add_argument("--repl", action="store_true",
                    help="interactive Python console with `system` bound")
    up.add_argument("--log-level", type=str.upper, choices=LEVELS, metavar="LEVEL",
                    help="TRACE..CRITICAL (default INFO; WARNING with --repl or --demo)")
    up.add_argument("--log-json", action="store_true", help="log JSON lines to stderr")
    up.add_argument("--demo", action="store_true",
                    help="self-contained demonstration (3 echo instances), no config needed")
    up.add_argument("--run-dir", metavar="DIR", help="where the control run file goes")
    up.set_defaults(func=cmd_up)

    def attached(name: str, help_text: str, func: Callable[[argparse.Namespace], int]
                 ) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text)
        sub.add_argument("--run-dir", metavar="DIR",
                         help="run directory of the system (default: $SPEAR_RUN_DIR, "
                              "$XDG_RUNTIME_DIR/spear-actors or /tmp/spear-actors-$UID)")
        sub.add_argument("--timeout", type=float, default=5.0, help="per request, seconds")
        sub.set_defaults(func=func)
        return sub

    attached("status", "one line per instance", cmd_status).add_argument(
        "--json", action="store_true")
    attached("tree", "draw the supervision tree", cmd_tree).add_argument(
        "--json", action="store_true")
    events = attached("events", "recent events, oldest first", cmd_events)
    events.add_argument("--follow", "-f", action="store_true", help="keep printing new ones")
    events.add_argument("--limit", "-n", type=int, default=50)
    events.add_argument("--json", action="store_true", help="one JSON object per line")
    events.add_argument("--kind", action="append", metavar="KIND",
                        help="only this kind (repeatable), e.g. InstanceRestarting")
    events.add_argument("--messages", action="store_true",
                        help="include the batched MessageReceived/MessageSent events")
    attached("metrics", "metrics snapshot", cmd_metrics).add_argument(
        "--json", action="store_true")
    attached("restart", "replace an instance's process now", cmd_restart).add_argument(
        "instance")
    attached("stop", "stop an instance for good", cmd_stop).add_argument("instance")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except SpearError as exc:  # NotRunning, TimeoutError, refused, ...
        return _fail(str(exc))
    except BrokenPipeError:  # e.g. `spear-actors events | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
