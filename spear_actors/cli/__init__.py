"""The ``spear-actors`` command: ``up`` runs a system; the other commands attach to one.

One module per job:

- :mod:`.up`: ``up`` (and ``up --demo``): load the TOML file, start the system and its
  control endpoint, launch the instances, watch them (main thread; two helper threads).
- :mod:`.shutdown`: how ``up`` ends: every cleanup step runs, whatever failed before it.
- :mod:`.signals`: the signal handlers (main thread, between bytecodes: flags only), the
  wake-up pipe the waiting loop sleeps on, and the forced kill of a second Ctrl-C.
- :mod:`.console`: ``up``'s progress and status output, which a dead stream never breaks;
  exit codes.
- :mod:`.repl`: the ``up --repl`` console.
- :mod:`.commands`: ``status``, ``start``, ``stop``, ``restart``, ``tail``, ``reload``,
  ``scale``, ``execute``, ``shutdown``, ``tree``, ``events``, ``metrics``, which talk to a
  running ``up`` through :func:`spear_actors.control.attach` (no pykka imported); the global
  ``--endpoint``/``--server-key``/``--client-key-file`` reach a remote one over CURVE.
- :mod:`.registry`: the command table :func:`build_parser` is built from; adding a command is
  one decorated function.

Exit codes: 0 fine, 1 failure or no system running (or output lost: stdout or stderr was
closed under us), 2 bad configuration or usage, 3 ``status``: not every named instance is
READY/BUSY, 4 a name matches nothing, 130 forced.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .. import __version__
from ..errors import SpearError
from . import commands, up  # noqa: F401  (importing them registers their commands)
from .console import EXIT_FAILURE, fail, settle_streams
from .registry import add_commands, command

__all__ = ["build_parser", "main"]


#: The global options (option, metavar, help) that reach a remote ``up``. Their values may
#: begin with ``-`` (a Z85 key does one time in 85): :func:`join_option_values` joins them.
_REMOTE_OPTIONS: tuple[tuple[str, str, str | None], ...] = (
    ("--endpoint", "tcp://HOST:PORT", None),
    ("--server-key", "Z85", "the server's public key"),
    ("--client-key-file", "CERT",
     "a secret certificate (zmq.auth.create_certificates) whose public key the server "
     "authorises"),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spear-actors", description="Spear node agent: supervised instances over ZeroMQ.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    remote = parser.add_argument_group(
        "remote control", "reach an `up` on another host through its CURVE endpoint "
        "([control] in its spear.toml) instead of the local run directory")
    for option, metavar, text in _REMOTE_OPTIONS:
        remote.add_argument(option, metavar=metavar, help=text)
    add_commands(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    return parser


def _help_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("topic", nargs="?", metavar="COMMAND")


@command("help", "this list, or one command's options", _help_options, attached=False)
def cmd_help(args: argparse.Namespace) -> int:
    parser = build_parser()
    if args.topic is None:
        parser.print_help()
        return 0
    try:
        parser.parse_args([args.topic, "--help"])
    except SystemExit as exc:  # argparse's way out after printing the help (or an error)
        return int(exc.code or 0)
    return 0


def join_option_values(argv: Sequence[str]) -> list[str]:
    """``--server-key -x...`` becomes ``--server-key=-x...`` before the command name.

    argparse takes a separate value that starts with ``-`` for an option and fails with
    "expected one argument"; a Z85 public key may start with ``-``. Only the global options
    before COMMAND are touched, so a command's own arguments reach argparse as given.
    """
    out = list(argv)
    i = 0
    while i < len(out) and out[i].startswith("-"):
        if any(out[i] == option for option, _, _ in _REMOTE_OPTIONS) and i + 1 < len(out):
            out[i:i + 2] = [f"{out[i]}={out[i + 1]}"]
        i += 1
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(join_option_values(sys.argv[1:] if argv is None else argv))
    try:
        code = int(args.func(args))
    except SpearError as exc:  # NotRunning, TimeoutError, refused, ...
        code = fail(str(exc))
    except BrokenPipeError:  # e.g. `spear-actors events | head`
        code = EXIT_FAILURE
    if settle_streams():  # output was cut: say so (and no exit code 120 from the last flush)
        code = code or EXIT_FAILURE
    return code
