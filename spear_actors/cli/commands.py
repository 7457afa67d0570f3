"""The commands that talk to a running ``up``: status, start, stop, restart, tail, reload,
scale, execute, shutdown, tree, events, metrics (supervisorctl's set, DESIGN.md section 8).

Each opens the control endpoint with :func:`spear_actors.control.attach` (through
:func:`attached`), asks, prints on stdout and returns its exit code; they import no pykka.
They run in the main thread of a short-lived process. Errors (:class:`SpearError`: nothing
running, a timeout, a refusal) reach :func:`spear_actors.cli.main`, which prints them and
exits 1. A new command is one decorated function here (see :mod:`.registry`).

NAME arguments (``status``, ``start``, ``stop``, ``restart``) are an instance id, a task id
or ``all``. Exit codes: 0 done; 1 failure or nothing reachable; 2 usage or configuration
error (``reload`` of a broken file); 3 ``status``: some named instance is not READY/BUSY;
4 a NAME matches nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError
from .console import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, duration
from .registry import command, json_flag

if TYPE_CHECKING:
    from ..control import Attached
    from ..records import InstanceInfo

__all__ = ["EVENT_KINDS", "EXIT_NOT_RUNNING", "EXIT_NO_MATCH", "attached", "cmd_events",
           "cmd_execute", "cmd_metrics", "cmd_reload", "cmd_restart", "cmd_scale",
           "cmd_shutdown", "cmd_start", "cmd_status", "cmd_stop", "cmd_tail", "cmd_tree",
           "resolve_names"]

EXIT_NOT_RUNNING = 3
"""``status``: some named instance is not READY or BUSY (supervisorctl's code)."""
EXIT_NO_MATCH = 4
"""A NAME matches no instance and no task."""

EVENT_KINDS = frozenset({
    "Connected", "Authenticated", "AuthenticationFailed", "Disconnected", "MessageReceived",
    "MessageSent", "HeartbeatTimeout", "Error", "InstanceCreated", "InstanceStarted",
    "InstanceReady", "InstanceExited", "InstanceRestarting", "InstanceFailed",
    "InstanceStopped", "ServiceRestarted", "SystemFailed"})
"""DESIGN.md sections 5 and 7. ``events`` leaves out the two Message* kinds unless asked."""


def attached(args: argparse.Namespace) -> Attached:
    """A handle on the system serving ``args.run_dir`` (use it as a context manager)."""
    from ..control import attach

    return attach(args.run_dir, timeout=args.timeout, endpoint=getattr(args, "endpoint", None),
                  server_key=getattr(args, "server_key", None),
                  client_key_file=getattr(args, "client_key_file", None))


def resolve_names(infos: list[InstanceInfo], names: list[str]
                  ) -> tuple[list[InstanceInfo], list[str]]:
    """The instances NAMES (instance ids, task ids, ``all``; none means all) select, in
    start order without repeats, and the names that matched nothing."""
    if not names:
        return list(infos), []
    chosen: set[str] = set()
    unmatched = []
    for name in names:
        hits = {i.id for i in infos if name in ("all", i.id, i.task_id)}
        if not hits and name != "all":
            unmatched.append(name)
        chosen |= hits
    return [i for i in infos if i.id in chosen], unmatched


def _no_match(names: list[str]) -> None:
    for name in names:
        print(f"{name}: no such instance or task", file=sys.stderr)


def _names(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help="instance id, task id or 'all' (default: all)")


def _names_required(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("names", nargs="+", metavar="NAME",
                        help="instance id, task id or 'all'")


@command("status", "one line per instance; exit 0 all READY/BUSY, 3 if not, 4 no such name",
         _names, json_flag)
def cmd_status(args: argparse.Namespace) -> int:
    with attached(args) as handle:
        everything = handle.instances()
        isolation = handle.ping().get("isolation")
    infos, unmatched = resolve_names(everything, args.names)
    _no_match(unmatched)
    code = (EXIT_NO_MATCH if unmatched else
            EXIT_NOT_RUNNING if any(not i.state.is_serving for i in infos) else EXIT_OK)
    if args.json:
        from ..control import plain

        print(json.dumps(plain(infos), indent=1))
        return code
    now = time.time()
    rows = [("ID", "TASK", "STATE", "PID", "RESTARTS", "UPTIME")]
    for i in infos:
        rows.append((i.id, i.task_id, i.state.value, str(i.pid or "-"), str(i.restarts),
                     duration(now - i.started_at) if i.started_at else "-"))
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    if isolation and not args.names:
        print(f"isolation: {isolation}")
    return code


@command("tree", "draw the supervision tree", json_flag)
def cmd_tree(args: argparse.Namespace) -> int:
    with attached(args) as handle:
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


def _events_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--follow", "-f", action="store_true", help="keep printing new ones")
    parser.add_argument("--limit", "-n", type=int, default=50)
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.add_argument("--kind", action="append", metavar="KIND",
                        help="only this kind (repeatable), e.g. InstanceRestarting")
    parser.add_argument("--messages", action="store_true",
                        help="include the batched MessageReceived/MessageSent events")


@command("events", "recent events, oldest first", _events_options)
def cmd_events(args: argparse.Namespace) -> int:
    kinds: set[str] | None = set(args.kind) if args.kind else None
    unknown = sorted((kinds or set()) - EVENT_KINDS)
    if unknown:
        print(f"events: unknown kind {', '.join(unknown)} (known: "
              f"{', '.join(sorted(EVENT_KINDS))})", file=sys.stderr)
        return EXIT_USAGE
    if kinds is None and not args.messages:
        kinds = set(EVENT_KINDS - {"MessageReceived", "MessageSent"})
    with attached(args) as handle:
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


@command("metrics", "metrics snapshot", json_flag)
def cmd_metrics(args: argparse.Namespace) -> int:
    with attached(args) as handle:
        m = handle.metrics()
    if args.json:
        print(json.dumps(m, indent=1, sort_keys=True))
        return 0
    from .metrics_table import render_metrics

    print(render_metrics(m, time.time()), end="")
    return 0


def _act(args: argparse.Namespace, verb: str) -> int:
    """start/stop/restart each named instance; explicit instance ids in the wrong state are
    errors (exit 1), tasks and ``all`` only act on those it applies to."""
    code = EXIT_OK
    with attached(args) as handle:
        infos, unmatched = resolve_names(handle.instances(), args.names)
        _no_match(unmatched)
        explicit = set(args.names)
        for info in infos:
            finished = info.state.is_final
            try:
                if verb == "start":
                    if not finished:
                        if info.id in explicit:
                            print(f"{info.id}: ERROR (already started)", file=sys.stderr)
                            code = code or EXIT_FAILURE
                        continue
                    handle.start_instance(info.id)
                    print(f"{info.id}: started")
                elif verb == "stop":
                    if finished:
                        if info.id in explicit:
                            print(f"{info.id}: ERROR (not running: {info.state.value})",
                                  file=sys.stderr)
                            code = code or EXIT_FAILURE
                        continue
                    stopped = handle.stop_instance(info.id)
                    print(f"{stopped.id}: {stopped.state.value}")
                elif finished:  # restart of a stopped one: start it (supervisorctl)
                    handle.start_instance(info.id)
                    print(f"{info.id}: started")
                else:
                    handle.restart_instance(info.id)
                    print(f"{info.id}: restarting")
            except ConfigError:
                raise
            except Exception as exc:  # SpearError from the server: say which, go on
                print(f"{info.id}: ERROR ({exc})", file=sys.stderr)
                code = EXIT_FAILURE
    return EXIT_NO_MATCH if unmatched and code == EXIT_OK else code


@command("start", "start STOPPED or FAILED instances again (same id, fresh restart budget)",
         _names_required)
def cmd_start(args: argparse.Namespace) -> int:
    return _act(args, "start")


@command("stop", "stop instances for good (until `start`)", _names_required)
def cmd_stop(args: argparse.Namespace) -> int:
    return _act(args, "stop")


@command("restart", "replace instances' processes now (a stopped one is started)",
         _names_required)
def cmd_restart(args: argparse.Namespace) -> int:
    return _act(args, "restart")


def _tail_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("instance", metavar="ID")
    parser.add_argument("-n", "--lines", type=int, default=10, metavar="N",
                        help="how many of the last lines (default 10)")
    parser.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")


@command("tail", "an instance's recent output (stdout and stderr, across restarts)",
         _tail_options)
def cmd_tail(args: argparse.Namespace) -> int:
    with attached(args) as handle:
        lines, last = handle.tail_since(args.instance, max(args.lines, 0))
        for line in lines:
            print(line, flush=True)
        if not args.follow:
            return EXIT_OK
        try:
            while True:
                time.sleep(0.2)
                lines, last = handle.tail_since(args.instance, -1, since=last)
                for line in lines:
                    print(line, flush=True)
        except KeyboardInterrupt:
            return EXIT_OK


@command("reload", "reread up's config file and apply it (exit 2 if it is invalid)",
         json_flag)
def cmd_reload(args: argparse.Namespace) -> int:
    with attached(args) as handle:
        try:
            report = handle.reload(timeout=max(args.timeout, 120.0))
        except ConfigError as exc:
            print(f"reload refused, nothing changed: {exc}", file=sys.stderr)
            return EXIT_USAGE
    if args.json:
        print(json.dumps(report, indent=1))
        return EXIT_OK
    print(f"reloaded {report['path']}")
    for key in ("added", "removed", "restarted"):
        if report[key]:
            print(f"  {key}: {', '.join(report[key])}")
    for task, (old, new) in report["scaled"].items():
        print(f"  scaled: {task} {old} -> {new}")
    for note in report["notes"]:
        print(f"  note: {note}")
    if not any(report[k] for k in ("added", "removed", "restarted", "scaled")):
        print("  no change")
    return EXIT_OK


def _scale_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("task", metavar="TASK")
    parser.add_argument("count", type=int, metavar="N")


@command("scale", "run N instances of TASK (running ones keep their pids)", _scale_options)
def cmd_scale(args: argparse.Namespace) -> int:
    if args.count < 0:
        print("scale: N must be >= 0", file=sys.stderr)
        return EXIT_USAGE
    with attached(args) as handle:
        result = handle.scale(args.task, args.count)
    for iid in result["created"]:
        print(f"{iid}: created")
    for iid in result["removed"]:
        print(f"{iid}: removed")
    print(f"{args.task}: {args.count} instance{'s' if args.count != 1 else ''}")
    return EXIT_OK


def _execute_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("target", metavar="TARGET", help="task id or instance id")
    parser.add_argument("data", metavar="DATA", help="the request's bytes ('-': stdin)")
    parser.add_argument("--method", "-m", default="", metavar="M")


@command("execute", "send one request; the answer's bytes go to stdout", _execute_options)
def cmd_execute(args: argparse.Namespace) -> int:
    data = sys.stdin.buffer.read() if args.data == "-" else args.data.encode()
    with attached(args) as handle:  # --timeout S bounds the request itself too
        try:
            answer = handle.execute(args.target, data, method=args.method,
                                    timeout=args.timeout)
        except ConfigError:
            raise
        except Exception as exc:  # SpearError: the handler's error, no instance, timeout
            print(f"execute failed: {type(exc).__name__}: {exc}", file=sys.stderr)
            return EXIT_FAILURE
    sys.stdout.buffer.write(answer)
    sys.stdout.buffer.flush()
    return EXIT_OK


@command("shutdown", "stop up gracefully (as SIGTERM does)")
def cmd_shutdown(args: argparse.Namespace) -> int:
    with attached(args) as handle:
        handle.shutdown()
        pid = handle.info.pid
    print(f"shutting down spear-actors (pid {pid})")
    return EXIT_OK
