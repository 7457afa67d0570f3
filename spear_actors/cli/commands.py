"""The commands that talk to a running ``up``: status, tree, events, metrics, restart, stop.

Each opens the control endpoint with :func:`spear_actors.control.attach` (through
:func:`attached`), asks, prints on stdout and returns its exit code; they import no pykka.
They run in the main thread of a short-lived process. Errors (:class:`SpearError`: nothing
running, a timeout, a refusal) reach :func:`spear_actors.cli.main`, which prints them and
exits 1. A new command is one decorated function here (see :mod:`.registry`).
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import datetime
from typing import TYPE_CHECKING, Any

from .console import duration
from .registry import command, json_flag

if TYPE_CHECKING:
    from ..control import Attached

__all__ = ["EVENT_KINDS", "attached", "cmd_events", "cmd_metrics", "cmd_restart",
           "cmd_status", "cmd_stop", "cmd_tree"]

EVENT_KINDS = frozenset({
    "Connected", "Authenticated", "AuthenticationFailed", "Disconnected", "MessageReceived",
    "MessageSent", "HeartbeatTimeout", "Error", "InstanceCreated", "InstanceStarted",
    "InstanceReady", "InstanceExited", "InstanceRestarting", "InstanceFailed",
    "InstanceStopped", "ServiceRestarted", "SystemFailed"})
"""DESIGN.md sections 5 and 7. ``events`` leaves out the two Message* kinds unless asked."""


def attached(args: argparse.Namespace) -> Attached:
    """A handle on the system serving ``args.run_dir`` (use it as a context manager)."""
    from ..control import attach

    return attach(args.run_dir, timeout=args.timeout)


@command("status", "one line per instance", json_flag)
def cmd_status(args: argparse.Namespace) -> int:
    with attached(args) as handle:
        infos = handle.instances()
        isolation = handle.ping().get("isolation")
    if args.json:
        from ..control import plain

        print(json.dumps(plain(infos), indent=1))
        return 0
    now = time.time()
    rows = [("ID", "TASK", "STATE", "PID", "RESTARTS", "UPTIME")]
    for i in infos:
        rows.append((i.id, i.task_id, i.state.value, str(i.pid or "-"), str(i.restarts),
                     duration(now - i.started_at) if i.started_at else "-"))
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    if isolation:
        print(f"isolation: {isolation}")
    return 0


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


def _instance_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("instance")


@command("restart", "replace an instance's process now", _instance_argument)
def cmd_restart(args: argparse.Namespace) -> int:
    with attached(args) as handle:
        handle.restart_instance(args.instance)
    print(f"restarting {args.instance}")
    return 0


@command("stop", "stop an instance for good", _instance_argument)
def cmd_stop(args: argparse.Namespace) -> int:
    with attached(args) as handle:
        info = handle.stop_instance(args.instance)
    print(f"{info.id} {info.state.value}")
    return 0
