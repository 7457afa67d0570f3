"""The ``spear-actors`` command: ``up`` runs a system; the other commands attach to one.

One module per job:

- :mod:`.up`: ``up`` (and ``up --demo``): load the TOML file, start the system and its
  control endpoint, launch the instances, watch them, shut everything down. Main thread.
- :mod:`.signals`: the signal handlers (main thread, between bytecodes: flags only) and the
  forced kill of a second Ctrl-C.
- :mod:`.console`: ``up``'s progress and status output; exit codes.
- :mod:`.repl`: the ``up --repl`` console.
- :mod:`.commands`: ``status``, ``tree``, ``events``, ``metrics``, ``restart``, ``stop``, which
  talk to a running ``up`` through :func:`spear_actors.control.attach` (no pykka imported).
- :mod:`.registry`: the command table :func:`build_parser` is built from; adding a command is
  one decorated function.

Exit codes: 0 fine, 1 failure or no system running, 2 bad configuration or usage, 130 forced.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from .. import __version__
from ..errors import SpearError
from . import commands, up  # noqa: F401  (importing them registers their commands)
from .console import EXIT_FAILURE, fail
from .registry import add_commands

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spear-actors", description="Spear node agent: supervised instances over ZeroMQ.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    add_commands(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except SpearError as exc:  # NotRunning, TimeoutError, refused, ...
        return fail(str(exc))
    except BrokenPipeError:  # e.g. `spear-actors events | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILURE
