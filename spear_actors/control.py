"""The local control endpoint of a running ``spear-actors up``, and :func:`attach` to it.

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

import contextlib
import dataclasses
import enum
import hmac
import json
import os
import secrets
import stat
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgpack
import zmq

from . import errors
from .config import InstanceConfig, ResourceLimits, from_mapping
from .errors import AuthenticationError, ConfigError, SpearError, TimeoutError, TransportError
from .inspect import SupervisionTree
from .records import ConnectionState, ConnectionStatus, Event, InstanceInfo, InstanceState

if TYPE_CHECKING:
    from .system import SpearSystem
    from .tomlconfig import ControlSettings

__all__ = [
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

RUN_FILE = "control.json"
MAX_REQUEST = 1 << 20
REFUSED = "control token refused"
_LOG_EVERY = 1.0  # at most one "refused" warning per second


class NotRunning(SpearError):
    """No spear-actors system serves this run directory."""


# -- run directory and run file --------------------------------------------------------------
def resolve_run_dir(run_dir: str | os.PathLike[str] | None = None) -> Path:
    """``run_dir``, else ``$SPEAR_RUN_DIR``, else ``$XDG_RUNTIME_DIR/spear-actors``, else
    ``/tmp/spear-actors-$UID``."""
    if run_dir is not None:
        return Path(run_dir)
    if os.environ.get("SPEAR_RUN_DIR"):
        return Path(os.environ["SPEAR_RUN_DIR"])
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and os.path.isdir(xdg):
        return Path(xdg) / "spear-actors"
    return Path(f"/tmp/spear-actors-{os.getuid()}")


def prepare_run_dir(run_dir: Path) -> Path:
    """Create ``run_dir`` (0700) or check that an existing one is ours and private."""
    try:
        run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = os.lstat(run_dir)
    except OSError as exc:
        raise SpearError(f"cannot create run directory {run_dir}: {exc}") from exc
    if not stat.S_ISDIR(st.st_mode):
        raise SpearError(f"run directory {run_dir} is not a directory (or is a symlink)")
    if st.st_uid != os.getuid():
        raise SpearError(f"run directory {run_dir} belongs to uid {st.st_uid}, not to us "
                         f"(uid {os.getuid()}); pass --run-dir or set SPEAR_RUN_DIR")
    if stat.S_IMODE(st.st_mode) != 0o700:
        os.chmod(run_dir, 0o700)
    return run_dir


def claim_run_dir(run_dir: Path) -> Path:
    """:func:`prepare_run_dir`, and refuse if another live system already serves it."""
    prepare_run_dir(run_dir)
    try:
        other = read_run_file(run_dir)
    except NotRunning:
        return run_dir  # none, or a stale one (replaced when we write ours)
    if other.pid != os.getpid():
        raise SpearError(f"another spear-actors (pid {other.pid}) is running with run "
                         f"directory {run_dir}; stop it, or pass --run-dir / set SPEAR_RUN_DIR")
    return run_dir


@dataclass(frozen=True)
class RunInfo:
    """What the run file holds. ``token`` is the credential: never print it."""

    endpoint: str
    token: str = dataclasses.field(repr=False)
    pid: int
    started_at: float
    listener: str = ""
    path: str = ""


def read_run_file(run_dir: Path) -> RunInfo:
    """The run file of the system serving ``run_dir``; NotRunning if there is none alive."""
    path = run_dir / RUN_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        info = RunInfo(endpoint=str(data["endpoint"]), token=str(data["token"]),
                       pid=int(data["pid"]), started_at=float(data["started_at"]),
                       listener=str(data.get("listener", "")), path=str(path))
    except FileNotFoundError:
        raise NotRunning(f"no spear-actors system is running (no run file {path}; start one "
                         "with `spear-actors up`, or pass the run directory it uses)") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise NotRunning(f"unreadable run file {path}: {exc}") from None
    if not _pid_alive(info.pid):
        raise NotRunning(f"no spear-actors system is running (stale run file {path}: "
                         f"pid {info.pid} is gone)")
    return info


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _write_run_file(run_dir: Path, payload: Mapping[str, Any]) -> Path:
    path = run_dir / RUN_FILE
    tmp = run_dir / f".{RUN_FILE}.{os.getpid()}"
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, json.dumps(dict(payload), indent=1).encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return path


# -- remote access (CURVE) -------------------------------------------------------------------
@dataclass(frozen=True)
class RemoteAccess:
    """The CURVE side of the control endpoint: where it binds, the server's key pair and the
    client public keys allowed in (Z85). Requests over it need no token: the key is the
    credential, checked by pyzmq's ZAP authenticator before any byte reaches us."""

    endpoint: str
    public_key: bytes
    secret_key: bytes = dataclasses.field(repr=False)
    authorized: frozenset[bytes]

    @classmethod
    def load(cls, settings: ControlSettings) -> RemoteAccess:
        """Read the key files named in ``[control]``; ConfigError naming the key if bad."""
        import zmq.auth

        assert settings.server_secret_key_file and settings.authorized_keys_file
        try:
            public, secret = zmq.auth.load_certificate(settings.server_secret_key_file)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"control.server_secret_key_file: {exc}") from None
        if not secret:
            raise ConfigError(f"control.server_secret_key_file: "
                              f"{settings.server_secret_key_file} holds no secret key (give "
                              "the .key_secret file zmq.auth.create_certificates writes)")
        keys: set[bytes] = set()
        try:
            text = Path(settings.authorized_keys_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"control.authorized_keys_file: {exc}") from None
        for number, line in enumerate(text.splitlines(), 1):
            key = line.strip()
            if not key or key.startswith("#"):
                continue
            if len(key) != 40 or not _is_z85(key):
                raise ConfigError(f"control.authorized_keys_file: line {number}: expected a "
                                  "40-character Z85 public key")
            keys.add(key.encode())
        return cls(settings.endpoint, public, secret, frozenset(keys))


def _is_z85(key: str) -> bool:
    from zmq.utils import z85

    try:
        z85.decode(key)
    except (ValueError, KeyError, TypeError):
        return False
    return True


class _KeyAllowList:
    """The ZAP policy: is this client public key (Z85) authorised? A pure decision; pyzmq's
    authenticator thread asks it and answers the handshake."""

    def __init__(self, authorized: frozenset[bytes]) -> None:
        self.authorized = authorized

    def callback(self, domain: str, key: bytes) -> bool:
        """``key`` is the client's public key, already Z85-encoded by pyzmq."""
        return bytes(key) in self.authorized


# -- plain data ------------------------------------------------------------------------------
def plain(value: Any) -> Any:
    """Records, enums and mappings as msgpack-friendly data (maps, lists, scalars)."""
    if isinstance(value, enum.Enum):
        return plain(value.value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)
                if f.name != "secret_validator"}
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset, deque)):
        return [plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str, bytes)):
        return value
    return repr(value)


def tree_from_dict(data: Mapping[str, Any]) -> SupervisionTree:
    """Rebuild a :class:`SupervisionTree` (whose repr draws it) from its ``to_dict()``."""
    nodes: list[dict[str, Any]] = []
    in_flight: dict[str, Any] = {}
    for node in data.get("instances", []):
        nodes.append({"info": _info(node),
                      "supervisor_alive": node["supervisor"]["alive"],
                      "restart_policy": dict(node["supervisor"]["restart_policy"])})
        in_flight[node["id"]] = {"in_flight": node.get("in_flight", 0)}
    tasks = dict(data.get("tasks", {}))
    runtime = data.get("runtime", {})
    return SupervisionTree(endpoint=data.get("endpoint"),
                           services=dict(runtime.get("services", {})),
                           instances=nodes, taken_at=float(data.get("taken_at", time.time())),
                           tasks={**tasks, "instances": in_flight},
                           service_restarts=dict(runtime.get("service_restarts") or {}),
                           failed=runtime.get("failed"), isolation=runtime.get("isolation"))


def _fields(cls: type[Any], data: Mapping[str, Any]) -> dict[str, Any]:
    return {f.name: data.get(f.name) for f in dataclasses.fields(cls)}


def _info(data: Mapping[str, Any]) -> InstanceInfo:
    fields = _fields(InstanceInfo, data)
    fields["state"] = InstanceState(fields["state"])
    return InstanceInfo(**fields)


def _connection(data: Mapping[str, Any]) -> ConnectionState:
    fields = _fields(ConnectionState, data)
    fields["status"] = ConnectionStatus(fields["status"])
    return ConnectionState(**fields)


def _event(data: Mapping[str, Any]) -> Event:
    return Event(seq=data["seq"], time=data["time"], kind=data["kind"],
                 data=dict(data.get("data") or {}))


# -- server ----------------------------------------------------------------------------------
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
        self.remote_endpoint = ""
        self._bind_endpoint = bind_endpoint
        self._reload = reload
        self._shutdown = shutdown
        self.run_dir = run_dir
        self.endpoint = ""
        self.requests = 0
        self.refused = 0
        self.run_file: Path | None = None
        self._token = secrets.token_urlsafe(32)
        self._host = bind_host
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="spear-control")
        self._replies: deque[tuple[int, list[bytes], bytes]] = deque()
        self._wake_r, self._wake_w = os.pipe()
        self._wake_lock = threading.Lock()
        self._stopping = threading.Event()
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._last_refusal_log = 0.0
        self._thread = threading.Thread(target=self._run, name="spear-control", daemon=True)
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
        self._thread.start()
        if not self._started.wait(timeout):
            raise TransportError("the control thread did not start in time")
        if self._error is not None:
            raise TransportError(f"cannot bind the control endpoint: {self._error}")
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
        if not self._stopping.is_set():
            self._stopping.set()
            self._wake()
            if self._thread.is_alive():
                self._thread.join(timeout)
            self._pool.shutdown(wait=False, cancel_futures=True)
            with self._wake_lock:
                os.close(self._wake_r)
                os.close(self._wake_w)
                self._wake_r = self._wake_w = -1

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

    # -- the control thread ------------------------------------------------------------------
    def _wake(self) -> None:
        with self._wake_lock:
            if self._wake_w >= 0:
                with contextlib.suppress(OSError):
                    os.write(self._wake_w, b"x")

    def _run(self) -> None:
        context = zmq.Context()
        sockets: list[zmq.Socket[bytes]] = []
        authenticator = None
        try:
            sock = context.socket(zmq.ROUTER)
            sockets.append(sock)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.MAXMSGSIZE, MAX_REQUEST)
            sock.bind(self._bind_endpoint or f"tcp://{self._host}:*")
            self.endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
            if self.remote is not None:
                from zmq.auth.thread import ThreadAuthenticator

                authenticator = ThreadAuthenticator(context)
                authenticator.start()
                authenticator.configure_curve_callback(
                    "*", credentials_provider=_KeyAllowList(self.remote.authorized))
                curve = context.socket(zmq.ROUTER)
                sockets.append(curve)
                curve.setsockopt(zmq.LINGER, 0)
                curve.setsockopt(zmq.MAXMSGSIZE, MAX_REQUEST)
                curve.curve_secretkey = self.remote.secret_key
                curve.curve_publickey = self.remote.public_key
                curve.curve_server = True
                curve.bind(self.remote.endpoint)
                self.remote_endpoint = curve.getsockopt_string(zmq.LAST_ENDPOINT)
        except zmq.ZMQError as exc:
            self._error = exc
            for s in sockets:
                s.close(0)
            if authenticator is not None:
                authenticator.stop()
            context.term()
            self._started.set()
            return
        self._started.set()
        poller = zmq.Poller()
        for s in sockets:
            poller.register(s, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        try:
            while not self._stopping.is_set():
                ready = dict(poller.poll())
                if ready.get(self._wake_r):
                    os.read(self._wake_r, 4096)
                for index, s in enumerate(sockets):
                    if ready.get(s):
                        self._drain(s, index)
                while self._replies:
                    index, envelope, body = self._replies.popleft()
                    with contextlib.suppress(zmq.ZMQError):
                        sockets[index].send_multipart([*envelope, body], zmq.NOBLOCK)
        except Exception:
            _log_exception("control endpoint: unexpected error, no longer serving")
        finally:
            for s in sockets:
                s.close(0)
            if authenticator is not None:
                authenticator.stop()
            context.term()

    def _drain(self, sock: zmq.Socket[bytes], index: int) -> None:
        """Socket 0 is the loopback endpoint (token checked), socket 1 the CURVE one."""
        for _ in range(256):
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            if not 2 <= len(frames) <= 3:
                continue  # not a REQ or DEALER peer: nothing sensible to answer
            envelope, body = frames[:-1], frames[-1]
            reply = self._accept(envelope, body, index)
            if reply is not None:
                with contextlib.suppress(zmq.ZMQError):
                    sock.send_multipart([*envelope, _pack(reply)], zmq.NOBLOCK)

    def _accept(self, envelope: list[bytes], body: bytes, index: int = 0
                ) -> dict[str, Any] | None:
        """Check one request; returns the reply now, or None once queued to the pool."""
        self.requests += 1
        try:
            request = msgpack.unpackb(body, raw=False, strict_map_key=True)
        except Exception:  # msgpack raises several unrelated types on bad input
            request = None
        token = request.get("token") if isinstance(request, dict) else None
        if index == 1 and isinstance(request, dict):
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
            self._pool.submit(self._perform, index, envelope, str(op), handler, args)
        except RuntimeError:  # pool shut down: we are stopping
            return {"ok": False, "code": "stopping", "error": "the system is shutting down"}
        return None

    # -- worker threads ----------------------------------------------------------------------
    def _perform(self, index: int, envelope: list[bytes], op: str,
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
        self._replies.append((index, envelope, _pack(reply)))
        self._wake()

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


def _pack(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)  # type: ignore[no-any-return]


def _log() -> Any:
    from ._log import logger  # the server runs inside `up`, where loguru is loaded anyway

    return logger


def _log_exception(message: str, *args: Any) -> None:
    """Traceback without local variables: request frames hold the control token."""
    from ._log import log_exception

    log_exception(_log(), message, *args)


# -- client ----------------------------------------------------------------------------------
class Attached:
    """A handle on a running system through its control endpoint (one thread at a time).

    Read methods mirror :class:`~spear_actors.system.SpearSystem`'s and return the same record
    types; ``timeout`` bounds every request (TimeoutError, and a fresh socket, when it runs
    out). Close it (or use ``with``) to release the socket.
    """

    def __init__(self, info: RunInfo, timeout: float = 5.0,
                 curve: tuple[bytes, bytes, bytes] | None = None) -> None:
        self.info = info
        self.timeout = timeout
        self._curve = curve  # (server public, client public, client secret): remote control
        self._executor: ThreadPoolExecutor | None = None
        self._context = zmq.Context()
        self._sock: zmq.Socket[bytes] | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<Attached pid {self.info.pid} control {self.info.endpoint}>"

    def __enter__(self) -> Attached:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        with self._lock:
            self._drop_socket()
            self._context.term()

    def _drop_socket(self) -> None:
        if self._sock is not None:
            self._sock.close(0)
            self._sock = None

    def request(self, op: str, args: Mapping[str, Any] | None = None,
                timeout: float | None = None) -> Any:
        """Send one request and return its ``result``; raise what the server reports."""
        limit = self.timeout if timeout is None else timeout
        body = _pack({"token": self.info.token, "op": op, "args": dict(args or {})})
        with self._lock:
            if self._sock is None:
                sock = self._context.socket(zmq.REQ)
                sock.setsockopt(zmq.LINGER, 0)
                if self._curve is not None:
                    sock.curve_serverkey, sock.curve_publickey, sock.curve_secretkey = \
                        self._curve
                sock.connect(self.info.endpoint)
                self._sock = sock
            self._sock.setsockopt(zmq.SNDTIMEO, max(1, int(limit * 1000)))
            self._sock.setsockopt(zmq.RCVTIMEO, max(1, int(limit * 1000)))
            try:
                self._sock.send(body)
                raw = self._sock.recv()
            except zmq.Again:
                self._drop_socket()  # a REQ socket that missed its reply is stuck: replace it
                who = (f"spear-actors (pid {self.info.pid})" if self.info.pid else
                       "the remote spear-actors")
                hint = (" (CURVE: a server key that does not match, or a client key the "
                        "server does not authorise, is never answered)"
                        if self._curve is not None else "")
                raise TimeoutError(f"{who} did not answer {op!r} on {self.info.endpoint} "
                                   f"within {limit} s{hint}") from None
            except zmq.ZMQError as exc:
                self._drop_socket()
                raise TransportError(f"control request {op!r} failed: {exc}") from exc
        try:
            reply = msgpack.unpackb(raw, raw=False)
        except Exception as exc:
            raise TransportError(f"undecodable control reply to {op!r}") from exc
        if not isinstance(reply, dict):
            raise TransportError(f"malformed control reply to {op!r}")
        if reply.get("ok"):
            return reply.get("result")
        message = str(reply.get("error") or "control request failed")
        if reply.get("code") == "refused":
            raise AuthenticationError(message)
        if reply.get("code") in ("bad_request", "config"):
            raise ConfigError(message)
        error_class = getattr(errors, str(reply.get("error_type")), None)
        if isinstance(error_class, type) and issubclass(error_class, SpearError):
            raise error_class(message)
        raise SpearError(message)

    # -- the SpearSystem read methods --------------------------------------------------------
    def ping(self) -> dict[str, Any]:
        return self.request("ping")  # type: ignore[no-any-return]

    def tree(self) -> SupervisionTree:
        return tree_from_dict(self.request("tree"))

    def instances(self, task_id: str | None = None) -> list[InstanceInfo]:
        return [_info(d) for d in self.request("instances", {"task_id": task_id})]

    def instance(self, instance_id: str) -> InstanceInfo:
        for info in self.instances():
            if info.id == instance_id:
                return info
        raise SpearError(f"no instance {instance_id!r}")

    def connections(self) -> list[ConnectionState]:
        return [_connection(d) for d in self.request("connections")]

    def metrics(self) -> dict[str, Any]:
        return self.request("metrics")  # type: ignore[no-any-return]

    def events(self, limit: int | None = 100, kinds: set[str] | None = None,
               since_seq: int | None = None) -> list[Event]:
        args = {"limit": limit, "kinds": sorted(kinds) if kinds else None,
                "since_seq": since_seq}
        return [_event(d) for d in self.request("events", args)]

    # -- operator actions --------------------------------------------------------------------
    def restart_instance(self, instance_id: str) -> None:
        """Replace the instance's process now (not counted against its restart policy)."""
        self.request("restart_instance", {"id": instance_id})

    def stop_instance(self, instance_id: str, timeout: float = 30.0) -> InstanceInfo:
        """Stop it for good; waits up to ``timeout`` (plus this handle's timeout)."""
        return _info(self.request("stop_instance", {"id": instance_id, "timeout": timeout},
                                  timeout=timeout + self.timeout))

    def inject_crash(self, target: str) -> None:
        """Chaos drill: make one actor of the running system fail as a bug would (see
        :meth:`SpearSystem.inject_crash <spear_actors.system.SpearSystem.inject_crash>`)."""
        self.request("inject_crash", {"target": target})

    def start_instance(self, instance_id: str) -> bool:
        """Bring a STOPPED or FAILED instance back under the same id with a fresh restart
        budget; False if it is running already."""
        return bool(self.request("start_instance", {"id": instance_id}))

    def scale(self, task_id: str, count: int, timeout: float = 30.0) -> dict[str, list[str]]:
        """Make ``task_id`` have ``count`` instances (see SpearSystem.scale)."""
        return self.request("scale", {"task_id": task_id, "count": count},  # type: ignore
                            timeout=timeout + self.timeout)

    def tail(self, instance_id: str, n: int = 100) -> list[str]:
        """The instance's last ``n`` output lines (stdout and stderr, across restarts)."""
        return list(self.tail_since(instance_id, n)[0])

    def tail_since(self, instance_id: str, n: int = 100, since: int | None = None
                   ) -> tuple[list[str], int]:
        """Lines after sequence number ``since`` and the newest one's number (to follow)."""
        result = self.request("tail", {"id": instance_id, "n": n, "since": since})
        return [str(line) for line in result["lines"]], int(result["last"])

    def reload(self, timeout: float = 120.0) -> dict[str, Any]:
        """Reread ``up``'s config file and apply it; ConfigError (nothing changed) if it is
        invalid. Returns what changed (added, removed, scaled, restarted, notes, path)."""
        return self.request("reload", timeout=timeout)  # type: ignore[no-any-return]

    def execute(self, target: str, data: bytes, method: str = "",
                timeout: float | None = None, retries: int = 0) -> bytes:
        """Send ``data`` to an instance of task ``target`` (or instance ``target``); returns
        the answer's bytes (raises what SpearSystem.execute raises)."""
        limit = (60.0 if timeout is None else timeout) + self.timeout
        result = self.request("execute", {"target": target, "data": bytes(data),
                                          "method": method, "timeout": timeout,
                                          "retries": retries}, timeout=limit)
        return bytes(result)

    def submit(self, target: str, data: bytes, method: str = "",
               timeout: float | None = None, retries: int = 0) -> Future[bytes]:
        """:meth:`execute` in a background thread of this handle; a Future of the answer."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1,
                                                thread_name_prefix="spear-attached")
        return self._executor.submit(self.execute, target, data, method, timeout, retries)

    def shutdown(self) -> None:
        """Ask ``up`` to stop gracefully, as SIGTERM would (returns once it accepted)."""
        self.request("shutdown")

    def create_instance(self, task_id: str, config: InstanceConfig,
                        limits: ResourceLimits | None = None) -> str:
        """Launch one more instance of ``task_id``; returns its id (see wait_ready)."""
        if not isinstance(config, InstanceConfig):
            raise ConfigError("config must be an InstanceConfig")
        return str(self.request("create_instance", {
            "task_id": task_id, "config": plain(config),
            "limits": plain(limits or ResourceLimits())}))

    def wait_ready(self, instance_id: str, timeout: float = 10.0) -> InstanceInfo:
        """Poll until the instance is READY/BUSY; TimeoutError after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            info = self.instance(instance_id)
            if info.state.is_serving:
                return info
            if info.state.is_final:
                raise errors.InstanceFailed(f"instance {instance_id} is {info.state.name}: "
                                            f"{info.last_error or 'no error recorded'}",
                                            instance_id)
            if time.monotonic() >= deadline:
                raise TimeoutError(f"instance {instance_id} not READY within {timeout} s "
                                   f"(it is {info.state.name})")
            time.sleep(0.05)


def attach(run_dir: str | os.PathLike[str] | None = None, timeout: float = 5.0, *,
           endpoint: str | None = None, server_key: str | None = None,
           client_key_file: str | os.PathLike[str] | None = None) -> Attached:
    """Connect to the system serving ``run_dir`` (default: see :func:`resolve_run_dir`), or,
    with ``endpoint``, to a remote control endpoint: ``server_key`` is the server's Z85 public
    key and ``client_key_file`` a secret certificate (``zmq.auth.create_certificates``) whose
    public key the server authorises.

    Raises NotRunning if no system is running there, TimeoutError if it does not answer (a
    remote server that refuses the key never answers).
    """
    if endpoint is None:
        handle = Attached(read_run_file(resolve_run_dir(run_dir)), timeout)
    else:
        handle = Attached(RunInfo(endpoint=endpoint, token="", pid=0, started_at=0.0),
                          timeout, _client_curve(server_key, client_key_file))
    try:
        info = handle.ping()
    except BaseException:
        handle.close()
        raise
    if endpoint is not None:
        handle.info = dataclasses.replace(handle.info, pid=int(info.get("pid", 0)))
    return handle


def _client_curve(server_key: str | None, client_key_file: str | os.PathLike[str] | None
                  ) -> tuple[bytes, bytes, bytes] | None:
    if server_key is None and client_key_file is None:
        return None
    if server_key is None or client_key_file is None:
        raise ConfigError("remote control needs both the server key and the client key file")
    if len(server_key) != 40 or not _is_z85(server_key):
        raise ConfigError("the server key must be a 40-character Z85 public key")
    import zmq.auth

    try:
        public, secret = zmq.auth.load_certificate(os.fspath(client_key_file))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"client key file {os.fspath(client_key_file)}: {exc}") from None
    if not secret:
        raise ConfigError(f"client key file {os.fspath(client_key_file)} holds no secret key")
    return server_key.encode(), public, secret
