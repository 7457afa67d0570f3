"""Server side, :class:`ControlServer`: what the control endpoint does with a request. The
sockets are :class:`~spear_actors.transport.control.ControlSockets`' (one thread,
"spear-control": a ROUTER on loopback and, with ``[control]`` CURVE settings, one beyond
loopback whose clients pyzmq's ZAP authenticator admits by key). In that thread this module
checks the token (constant-time, before anything else), answers cheap errors itself and hands
each operation to a small worker pool (so a slow ``stop_instance`` holds up nobody); a worker
hands its reply back to the socket thread. The endpoint and a random token go into the run
file; it is removed on shutdown. No secret (instance secret, token, environment) is ever part
of a result.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hmac
import json
import os
import secrets
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgpack

from ..config import InstanceConfig, ResourceLimits, from_mapping
from ..errors import ConfigError, SpearError
from ..transport.control import ControlRequest, ControlSockets

if TYPE_CHECKING:
    from ..system import SpearSystem

from .curve import RemoteAccess
from .rundir import RunInfo, _write_run_file, claim_run_dir
from .wire import MAX_REQUEST, REFUSED, pack, plain

__all__ = ["ControlServer"]

_LOG_EVERY = 1.0  # at most one "refused" warning per second


class _BadRequest(Exception):
    pass


def _arg(args: Mapping[str, Any], name: str, kind: type | tuple[type, ...], default: Any = ...
         ) -> Any:
    if name not in args or args[name] is None:
        if default is ...:
            raise _BadRequest(f"missing argument {name!r}")
        return default
    value = args[name]
    if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        raise _BadRequest(f"argument {name!r} has the wrong type (bool)")
    if not isinstance(value, kind):
        raise _BadRequest(f"argument {name!r} has the wrong type ({type(value).__name__})")
    return value


class ControlServer:
    """Serves the control endpoint for ``system``; use as a context manager.

    :meth:`start` (caller's thread) binds in the control thread, waits for it (bounded),
    then writes the run file; :meth:`close` stops the thread and removes the run file.
    """

    def __init__(self, system: SpearSystem, run_dir: Path, *, workers: int = 4,
                 bind_host: str = "127.0.0.1", bind_endpoint: str | None = None,
                 remote: RemoteAccess | None = None,
                 reload: Callable[[], Any] | None = None,
                 shutdown: Callable[[], None] | None = None) -> None:
        self.system = system
        self.remote = remote
        self._reload = reload
        self._shutdown = shutdown
        self.run_dir = run_dir
        self.requests = 0
        self.refused = 0
        self.run_file: Path | None = None
        self._token = secrets.token_urlsafe(32)
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="spear-control")
        self._closed = False
        self._last_refusal_log = 0.0
        self._sockets = ControlSockets(self._on_request, bind_endpoint or f"tcp://{bind_host}:*",
                                       max_request=MAX_REQUEST, curve=remote)
        self._ops: dict[str, Callable[[Mapping[str, Any]], Any]] = {
            "ping": self._op_ping, "tree": self._op_tree, "instances": self._op_instances,
            "connections": self._op_connections, "metrics": self._op_metrics,
            "events": self._op_events, "restart_instance": self._op_restart,
            "stop_instance": self._op_stop, "create_instance": self._op_create,
            "inject_crash": self._op_inject_crash, "start_instance": self._op_start,
            "scale": self._op_scale, "tail": self._op_tail, "reload": self._op_reload,
            "execute": self._op_execute, "shutdown": self._op_shutdown}

    # -- lifecycle (caller's thread) ----------------------------------------------------------
    def start(self, timeout: float = 10.0) -> RunInfo:
        claim_run_dir(self.run_dir)
        self._sockets.start(timeout)
        info = RunInfo(endpoint=self.endpoint, token=self._token, pid=os.getpid(),
                       started_at=time.time(), listener=self.system.endpoint)
        payload = {"endpoint": info.endpoint, "token": info.token, "pid": info.pid,
                   "started_at": info.started_at, "listener": info.listener}
        self.run_file = _write_run_file(self.run_dir, payload)
        _log().info("control endpoint {} (run file {})", self.endpoint, self.run_file)
        if self.remote_endpoint:
            _log().info("remote control endpoint {} (CURVE, {} authorised keys)",
                        self.remote_endpoint, len(self.remote.authorized if self.remote else ()))
        return dataclasses.replace(info, path=str(self.run_file))

    def close(self, timeout: float = 5.0) -> None:
        """Stop serving and remove the run file; idempotent."""
        if self.run_file is not None:
            with contextlib.suppress(OSError, ValueError, KeyError):
                data = json.loads(self.run_file.read_text(encoding="utf-8"))
                if data.get("pid") == os.getpid():
                    self.run_file.unlink()
            self.run_file = None
        if not self._closed:
            self._closed = True
            self._sockets.stop(timeout)
            self._pool.shutdown(wait=False, cancel_futures=True)

    def remove_run_file(self) -> None:
        """Best effort, for the forced exit path (no thread joins)."""
        if self.run_file is not None:
            with contextlib.suppress(OSError):
                self.run_file.unlink()

    def __enter__(self) -> ControlServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def endpoint(self) -> str:
        """The loopback endpoint (once started)."""
        return self._sockets.endpoint

    @property
    def remote_endpoint(self) -> str:
        """The CURVE endpoint ("" without ``remote``)."""
        return self._sockets.remote_endpoint

    # -- the control socket thread -----------------------------------------------------------
    def _on_request(self, arrived: ControlRequest) -> bytes | None:
        reply = self._accept(arrived)
        return None if reply is None else pack(reply)

    def _accept(self, arrived: ControlRequest) -> dict[str, Any] | None:
        """Check one request; returns the reply now, or None once queued to the pool."""
        self.requests += 1
        try:
            request = msgpack.unpackb(arrived.body, raw=False, strict_map_key=True)
        except Exception:  # msgpack raises several unrelated types on bad input
            request = None
        token = request.get("token") if isinstance(request, dict) else None
        if arrived.curve and isinstance(request, dict):
            pass  # the CURVE endpoint: the ZAP handler already authenticated the key
        elif not isinstance(token, str) or not hmac.compare_digest(
                token.encode("utf-8", "replace"), self._token.encode()):
            self.refused += 1
            now = time.monotonic()
            if now - self._last_refusal_log >= _LOG_EVERY:
                self._last_refusal_log = now
                _log().warning("control request refused: bad or missing token ({} so far)",
                               self.refused)
            return {"ok": False, "code": "refused", "error": REFUSED}
        assert isinstance(request, dict)
        op, args = request.get("op"), request.get("args") or {}
        handler = self._ops.get(op) if isinstance(op, str) else None
        if handler is None:
            return {"ok": False, "code": "unknown_op",
                    "error": f"unknown op {op!r} (known: {', '.join(sorted(self._ops))})"}
        if not isinstance(args, dict):
            return {"ok": False, "code": "bad_request", "error": "args must be a map"}
        try:
            self._pool.submit(self._perform, arrived, str(op), handler, args)
        except RuntimeError:  # pool shut down: we are stopping
            return {"ok": False, "code": "stopping", "error": "the system is shutting down"}
        return None

    # -- worker threads ----------------------------------------------------------------------
    def _perform(self, arrived: ControlRequest, op: str,
                 handler: Callable[[Mapping[str, Any]], Any], args: Mapping[str, Any]) -> None:
        try:
            reply: dict[str, Any] = {"ok": True, "result": plain(handler(args))}
        except _BadRequest as exc:
            reply = {"ok": False, "code": "bad_request", "error": f"{op}: {exc}"}
        except ConfigError as exc:
            reply = {"ok": False, "code": "config", "error_type": "ConfigError",
                     "error": str(exc)}
        except SpearError as exc:
            reply = {"ok": False, "code": "error", "error_type": type(exc).__name__,
                     "error": str(exc)}
        except Exception as exc:
            _log_exception("control op {} failed", op)
            reply = {"ok": False, "code": "internal", "error": f"{op}: internal error: {exc}"}
        self._sockets.reply(arrived, pack(reply))

    def _op_ping(self, args: Mapping[str, Any]) -> Any:
        return {"pid": os.getpid(), "listener": self.system.endpoint, "time": time.time(),
                "isolation": self.system.isolation}

    def _op_tree(self, args: Mapping[str, Any]) -> Any:
        return self.system.tree().to_dict()

    def _op_instances(self, args: Mapping[str, Any]) -> Any:
        return self.system.instances(_arg(args, "task_id", str, None))

    def _op_connections(self, args: Mapping[str, Any]) -> Any:
        return self.system.connections()

    def _op_metrics(self, args: Mapping[str, Any]) -> Any:
        snapshot = dict(self.system.metrics())
        snapshot["control"] = {"requests": self.requests, "refused": self.refused}
        return snapshot

    def _op_events(self, args: Mapping[str, Any]) -> Any:
        kinds = _arg(args, "kinds", list, None)
        if kinds is not None and not all(isinstance(k, str) for k in kinds):
            raise _BadRequest("argument 'kinds' must be a list of strings")
        return self.system.events(limit=_arg(args, "limit", int, None),
                                  kinds=set(kinds) if kinds else None,
                                  since_seq=_arg(args, "since_seq", int, None))

    def _op_restart(self, args: Mapping[str, Any]) -> Any:
        self.system.restart_instance(_arg(args, "id", str))
        return None

    def _op_stop(self, args: Mapping[str, Any]) -> Any:
        return self.system.stop_instance(_arg(args, "id", str),
                                         timeout=float(_arg(args, "timeout", (int, float), 30)))

    def _op_inject_crash(self, args: Mapping[str, Any]) -> Any:
        self.system.inject_crash(_arg(args, "target", str))
        return None

    def _op_start(self, args: Mapping[str, Any]) -> Any:
        return self.system.start_instance(_arg(args, "id", str))

    def _op_scale(self, args: Mapping[str, Any]) -> Any:
        count = _arg(args, "count", int)
        return self.system.scale(_arg(args, "task_id", str), count)

    def _op_tail(self, args: Mapping[str, Any]) -> Any:
        lines, last = self.system.tail_since(_arg(args, "id", str), _arg(args, "n", int, 100),
                                             _arg(args, "since", int, None))
        return {"lines": lines, "last": last}

    def _op_reload(self, args: Mapping[str, Any]) -> Any:
        if self._reload is None:
            raise SpearError("this system cannot reload (it was not started by `up`)")
        return self._reload()

    def _op_execute(self, args: Mapping[str, Any]) -> Any:
        timeout = _arg(args, "timeout", (int, float), None)
        return self.system.execute(_arg(args, "target", str), _arg(args, "data", bytes),
                                   method=_arg(args, "method", str, ""),
                                   timeout=None if timeout is None else float(timeout),
                                   retries=_arg(args, "retries", int, 0))

    def _op_shutdown(self, args: Mapping[str, Any]) -> Any:
        if self._shutdown is None:
            raise SpearError("this system cannot be shut down from here")
        self._shutdown()
        return {"pid": os.getpid()}

    def _op_create(self, args: Mapping[str, Any]) -> Any:
        try:
            config = from_mapping(InstanceConfig, _arg(args, "config", dict), "config")
            limits = from_mapping(ResourceLimits, _arg(args, "limits", dict, {}), "limits")
        except ConfigError as exc:
            raise _BadRequest(str(exc)) from None
        return self.system.create_instance(_arg(args, "task_id", str), config, limits)


def _log() -> Any:
    from .._log import logger  # the server runs inside `up`, where loguru is loaded anyway

    return logger


def _log_exception(message: str, *args: Any) -> None:
    """Traceback without local variables: request frames hold the control token."""
    from .._log import log_exception

    log_exception(_log(), message, *args)
