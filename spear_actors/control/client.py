"""Client side: :func:`attach` returns an :class:`Attached` handle with the read methods of
:class:`~spear_actors.system.SpearSystem` (same record types back) and the operator actions,
to the local ``up`` (run file and token) or a remote one (``endpoint``, CURVE keys). The
socket is :class:`~spear_actors.transport.control_client.RequestChannel`'s; every request has
a timeout (:class:`~spear_actors.errors.TimeoutError`). Imports no pykka or loguru.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import msgpack

from .. import errors
from ..config import InstanceConfig, ResourceLimits
from ..errors import AuthenticationError, ConfigError, SpearError, TimeoutError, TransportError
from ..inspect import SupervisionTree
from ..records import ConnectionState, Event, InstanceInfo
from ..tomlconfig import command_from, path_from
from ..transport.control_client import NoReply, RequestChannel
from .curve import is_z85
from .rundir import RunInfo, read_run_file, resolve_run_dir
from .wire import connection_from, event_from, info_from, pack, plain, tree_from_dict

__all__ = ["Attached", "attach"]

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
        self._channel = RequestChannel(info.endpoint, curve)

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
        self._channel.close()

    def request(self, op: str, args: Mapping[str, Any] | None = None,
                timeout: float | None = None) -> Any:
        """Send one request and return its ``result``; raise what the server reports."""
        limit = self.timeout if timeout is None else timeout
        body = pack({"token": self.info.token, "op": op, "args": dict(args or {})})
        try:
            raw = self._channel.request(body, limit)
        except NoReply:
            who = (f"spear-actors (pid {self.info.pid})" if self.info.pid else
                   "the remote spear-actors")
            hint = (" (CURVE: a server key that does not match, or a client key the "
                    "server does not authorise, is never answered)"
                    if self._curve is not None else "")
            raise TimeoutError(f"{who} did not answer {op!r} on {self.info.endpoint} "
                               f"within {limit} s{hint}") from None
        except TransportError as exc:
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
        return [info_from(d) for d in self.request("instances", {"task_id": task_id})]

    def instance(self, instance_id: str) -> InstanceInfo:
        for info in self.instances():
            if info.id == instance_id:
                return info
        raise SpearError(f"no instance {instance_id!r}")

    def connections(self) -> list[ConnectionState]:
        return [connection_from(d) for d in self.request("connections")]

    def metrics(self) -> dict[str, Any]:
        return self.request("metrics")  # type: ignore[no-any-return]

    def events(self, limit: int | None = 100, kinds: set[str] | None = None,
               since_seq: int | None = None) -> list[Event]:
        args = {"limit": limit, "kinds": sorted(kinds) if kinds else None,
                "since_seq": since_seq}
        return [event_from(d) for d in self.request("events", args)]

    # -- operator actions --------------------------------------------------------------------
    def restart_instance(self, instance_id: str) -> None:
        """Replace the instance's process now (not counted against its restart policy)."""
        self.request("restart_instance", {"id": instance_id})

    def stop_instance(self, instance_id: str, timeout: float = 30.0) -> InstanceInfo:
        """Stop it for good; waits up to ``timeout`` (plus this handle's timeout)."""
        return info_from(self.request("stop_instance", {"id": instance_id, "timeout": timeout},
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
        """Launch one more instance of ``task_id``; returns its id (see wait_ready).

        Attached to a local system, paths are the caller's, as on a command line: a
        relative ``working_dir`` and a relative ``command[0]`` containing a ``/`` are taken
        from the current directory, and without a ``working_dir`` the instance starts in it
        (so ``["python3", "upper.py"]`` runs ./upper.py). Attached by ``endpoint``, paths
        are the remote host's and are sent as given."""
        if not isinstance(config, InstanceConfig):
            raise ConfigError("config must be an InstanceConfig")
        if self._curve is None:
            config = _from_callers_directory(config)
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


def _from_callers_directory(config: InstanceConfig) -> InstanceConfig:
    cwd = os.getcwd()
    command = tuple(command_from(list(config.command), cwd)) if config.command else ()
    working_dir = path_from(cwd, config.working_dir) if config.working_dir else cwd
    return dataclasses.replace(config, command=command, working_dir=working_dir)


def _client_curve(server_key: str | None, client_key_file: str | os.PathLike[str] | None
                  ) -> tuple[bytes, bytes, bytes] | None:
    if server_key is None and client_key_file is None:
        return None
    if server_key is None or client_key_file is None:
        raise ConfigError("remote control needs both the server key and the client key file")
    if len(server_key) != 40 or not is_z85(server_key):
        raise ConfigError("the server key must be a 40-character Z85 public key")
    import zmq.auth

    try:
        public, secret = zmq.auth.load_certificate(os.fspath(client_key_file))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"client key file {os.fspath(client_key_file)}: {exc}") from None
    if not secret:
        raise ConfigError(f"client key file {os.fspath(client_key_file)} holds no secret key")
    return server_key.encode(), public, secret
