"""The control endpoint of a running ``spear-actors up``, and :func:`attach` to it.

One module per job: :mod:`.rundir` (run directory and run file), :mod:`.wire` (the
messages and plain data), :mod:`.curve` (remote access keys and the ZAP policy),
:mod:`.server` (:class:`ControlServer`), :mod:`.client` (:func:`attach`, :class:`Attached`).

Server side, :class:`ControlServer`: one background thread ("spear-control") owns a ZeroMQ
ROUTER bound to an OS-chosen port on loopback. It checks every request's token (constant-time)
before anything else, answers cheap errors itself and hands each operation to a small worker
pool (so a slow ``stop_instance`` holds up nobody); workers queue the reply and wake the socket
thread through a pipe, so only that thread ever touches the socket. The endpoint and a random
token go into a run file (JSON, mode 0600) in a run directory (mode 0700, ours); it is removed
on shutdown. Whoever can read that file may operate the system; nothing else can.

Wire: one msgpack map per request, ``{token, op, args}``; the answer is ``{ok: true, result}``
or ``{ok: false, code, error[, error_type]}``. Results are plain data (records as maps, enums
as their values); no secret (instance secret, token, environment) is ever part of one.

Client side, :func:`attach` returns an :class:`Attached` handle with the read methods of
:class:`~spear_actors.system.SpearSystem` (same record types back) and the operator actions.
Every request has a timeout; on timeout the REQ socket is thrown away and
:class:`~spear_actors.errors.TimeoutError` raised. The client imports no pykka or loguru.
"""

from __future__ import annotations

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
from .server import ControlServer
from .wire import REFUSED, plain, tree_from_dict

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
