"""Choosing and binding listener endpoints: loopback TCP (port 0 = the OS picks), port
fallback in a range, or ipc sockets in a private 0700 directory. Runs in the binding thread.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import shutil
import socket as pysocket
import tempfile
from dataclasses import dataclass

import zmq

from ..config import ConnectionConfig
from ..errors import ConfigError, TransportError

__all__ = ["BoundEndpoint", "bind_listener", "is_loopback", "release_endpoint"]


@dataclass(frozen=True, slots=True)
class BoundEndpoint:
    """Where a listener ended up: the full endpoint, its TCP port and ipc dir (if any)."""

    endpoint: str
    transport: str
    port: int | None
    ipc_dir: str | None = None
    owns_ipc_dir: bool = False


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        try:
            return all(ipaddress.ip_address(info[4][0]).is_loopback
                       for info in pysocket.getaddrinfo(host, None))
        except (OSError, ValueError):
            return False


def _tcp_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def bind_listener(sock: zmq.Socket[bytes], config: ConnectionConfig,
                  name: str = "spear") -> BoundEndpoint:
    """Bind ``sock`` as ``config`` says and report the endpoint actually used."""
    if config.transport == "ipc":
        return _bind_ipc(sock, config, name)
    if not is_loopback(config.host):
        if not config.allow_remote:
            raise ConfigError(f"refusing to bind {config.host}: not a loopback address; set "
                              "connection.allow_remote (with CURVE keys) to listen beyond "
                              "this machine")
        if not config.curve_secret_key:
            raise ConfigError("connection.allow_remote needs curve_secret_key (and "
                              "curve_public_key): remote listeners must be encrypted")
    host = _tcp_host(config.host)
    if config.port == 0:
        try:
            sock.bind(f"tcp://{host}:*")
        except zmq.ZMQError as exc:
            raise TransportError(f"cannot bind tcp://{host}:* : {exc}") from exc
        return _tcp_result(sock)
    last = config.port_range_end if config.port_fallback else config.port
    if last is None:
        last = min(65535, config.port + 100)
    error: zmq.ZMQError | None = None
    for port in range(config.port, last + 1):
        try:
            sock.bind(f"tcp://{host}:{port}")
        except zmq.ZMQError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise TransportError(f"cannot bind tcp://{host}:{port}: {exc}") from exc
            error = exc
            continue
        return _tcp_result(sock)
    span = f"ports {config.port}-{last}" if last != config.port else f"port {config.port}"
    hint = "" if config.port_fallback else " (set port_fallback to try the next ports)"
    raise TransportError(f"cannot bind tcp://{host}: {span} in use{hint}") from error


def _tcp_result(sock: zmq.Socket[bytes]) -> BoundEndpoint:
    endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
    return BoundEndpoint(endpoint, "tcp", int(endpoint.rsplit(":", 1)[1]))


def _bind_ipc(sock: zmq.Socket[bytes], config: ConnectionConfig, name: str) -> BoundEndpoint:
    owns = config.ipc_dir is None
    directory = tempfile.mkdtemp(prefix="spear-ipc-") if owns else str(config.ipc_dir)
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        os.chmod(directory, 0o700)
        path = os.path.join(directory, f"{name}.sock")
        if len(path.encode()) > 100:  # sun_path is ~107 bytes
            raise TransportError(f"ipc path too long for a unix socket: {path}")
        sock.bind(f"ipc://{path}")
    except (OSError, zmq.ZMQError) as exc:
        if owns:
            shutil.rmtree(directory, ignore_errors=True)
        raise TransportError(f"cannot bind ipc endpoint in {directory}: {exc}") from exc
    return BoundEndpoint(f"ipc://{path}", "ipc", None, directory, owns)


def release_endpoint(bound: BoundEndpoint) -> None:
    """Remove what binding created (the private ipc directory)."""
    if bound.ipc_dir and bound.owns_ipc_dir:
        shutil.rmtree(bound.ipc_dir, ignore_errors=True)
