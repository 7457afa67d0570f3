"""The control endpoint of a running ``spear-actors up``, and :func:`attach` to it.

One module per job: :mod:`.rundir` (run directory and run file), :mod:`.wire` (the
messages and plain data), :mod:`.curve` (remote access keys and the ZAP policy),
:mod:`.server` (:class:`ControlServer`), :mod:`.client` (:func:`attach`, :class:`Attached`).

Server side, :class:`ControlServer`: the sockets are
:class:`~spear_actors.transport.control.ControlSockets`' (one thread, "spear-control", on the
same socket-thread driver as the router pump: a ROUTER bound to an OS-chosen port on
loopback). In that thread the server checks every request's token (constant-time) before
anything else, answers cheap errors itself and hands each operation to a small worker pool
(so a slow ``stop_instance`` holds up nobody); a worker hands its reply back to the socket
thread, so only that thread ever touches the socket. The endpoint and a random token go into
a run file (JSON, mode 0600) in a run directory (mode 0700, ours); it is removed on shutdown.
Whoever can read that file may operate the system; nothing else can.

Wire: one msgpack map per request, ``{token, op, args}``; the answer is ``{ok: true, result}``
or ``{ok: false, code, error[, error_type]}``. Results are plain data (records as maps, enums
as their values); no secret (instance secret, token, environment) is ever part of one.

Client side, :func:`attach` returns an :class:`Attached` handle with the read methods of
:class:`~spear_actors.system.SpearSystem` (same record types back) and the operator actions.
Every request has a timeout (:class:`~spear_actors.errors.TimeoutError`); the REQ socket is
:class:`~spear_actors.transport.control_client.RequestChannel`'s. The client imports no pykka
or loguru.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .client import Attached, attach
from .curve import RemoteAccess
from .rundir import (
    RUN_FILE,
    NotRunning,
    RunInfo,
    claim_run_dir,
    prepare_run_dir,
    read_run_file,
    resolve_run_dir,
)
from .wire import REFUSED, plain, tree_from_dict

if TYPE_CHECKING:
    from .server import ControlServer

__all__ = [
    "REFUSED",
    "RUN_FILE",
    "Attached",
    "ControlServer",
    "NotRunning",
    "RemoteAccess",
    "RunInfo",
    "attach",
    "claim_run_dir",
    "plain",
    "prepare_run_dir",
    "read_run_file",
    "resolve_run_dir",
    "tree_from_dict",
]


def __getattr__(name: str) -> Any:
    # the server (and the loguru its socket thread logs with) loads only where it runs, in
    # `up`: attach() and the CLI's client commands stay light
    if name == "ControlServer":
        from .server import ControlServer

        return ControlServer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
