"""The command table: every ``spear-actors`` subcommand is one :class:`Command`.

Adding a command: write ``def cmd_x(args: argparse.Namespace) -> int`` in the module of its
job (``commands.py`` for the ones that attach to a running ``up``) and decorate it with
``@command("x", "help text", configure, ...)``; each ``configure`` adds arguments to the
command's parser; the module must be imported by ``cli/__init__.py``. Commands registered
with ``attached=True`` (the default) get ``--run-dir`` and ``--timeout``.
:func:`spear_actors.cli.build_parser` lists the others (``up``) first, then the attached ones,
each group in registration order.

Registration happens at import time, parsing in the main thread; nothing here runs later.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["COMMANDS", "Command", "Configure", "Handler", "add_commands", "command",
           "json_flag"]

Handler = Callable[[argparse.Namespace], int]
"""Runs a command; returns the exit code."""
Configure = Callable[[argparse.ArgumentParser], None]
"""Adds a command's own arguments to its parser."""


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    run: Handler
    configure: tuple[Configure, ...] = ()
    attached: bool = True
    """Talks to a running ``up`` through the control endpoint (gets --run-dir, --timeout)."""


COMMANDS: dict[str, Command] = {}
"""Every registered command by name, in registration order."""


def command(name: str, help_text: str, *configure: Configure,
            attached: bool = True) -> Callable[[Handler], Handler]:
    """Decorator registering ``cmd_...`` as the subcommand ``name``."""
    def register(run: Handler) -> Handler:
        if name in COMMANDS:
            raise ValueError(f"command {name!r} registered twice")
        COMMANDS[name] = Command(name, help_text, run, configure, attached)
        return run
    return register


def json_flag(parser: argparse.ArgumentParser) -> None:
    """``--json``: machine-readable output."""
    parser.add_argument("--json", action="store_true")


def _attach_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run-dir", metavar="DIR",
                        help="run directory of the system (default: $SPEAR_RUN_DIR, "
                             "$XDG_RUNTIME_DIR/spear-actors or /tmp/spear-actors-$UID)")
    parser.add_argument("--timeout", type=float, default=5.0, help="per request, seconds")


def add_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """One subparser per registered command: those that do not attach first."""
    for cmd in sorted(COMMANDS.values(), key=lambda c: c.attached):
        sub = subparsers.add_parser(cmd.name, help=cmd.help)
        if cmd.attached:
            _attach_options(sub)
        for configure in cmd.configure:
            configure(sub)
        sub.set_defaults(func=cmd.run)
