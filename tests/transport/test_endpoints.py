"""Binding listeners: port conflicts and fallback, ipc endpoints in a private directory,
loopback-only unless remote access is allowed."""

from __future__ import annotations

import os
import socket
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from spear_actors.config import ConnectionConfig
from spear_actors.errors import ConfigError, TransportError
from spear_actors.protocol.server import Closed
from spear_actors.transport.endpoints import bind_listener, is_loopback, release_endpoint
from spear_actors.transport.router import RouterPump

from .conftest import ECHO_MODULE, WAIT, Clients, ServerHarness, short_config


@pytest.fixture
def held_port() -> Iterator[int]:
    """A loopback TCP port someone else is listening on."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield int(holder.getsockname()[1])


@pytest.fixture
def router() -> Iterator[zmq.Socket[bytes]]:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    yield sock
    sock.close(linger=0)
    ctx.term()


def test_taken_port_is_an_error_naming_it(held_port: int) -> None:
    pump = RouterPump(lambda batch: None, short_config(port=held_port))
    try:
        with pytest.raises(TransportError, match=rf"port {held_port} in use.*port_fallback"):
            pump.start()
        assert not pump.running and pump.port is None
    finally:
        pump.stop()


def test_port_fallback_binds_the_next_free_port(held_port: int,
                                                server_factory: Any,
                                                clients: Clients) -> None:
    server: ServerHarness = server_factory(short_config(
        port=held_port, port_fallback=True, port_range_end=held_port + 20))
    assert server.pump is not None and server.pump.port is not None
    assert held_port < server.pump.port <= held_port + 20
    assert server.endpoint == f"tcp://127.0.0.1:{server.pump.port}"
    # and it serves there
    secret = server.expect("inst-1")
    client = clients.new(server, "inst-1", secret)
    assert client.connect(timeout=WAIT) == server.authenticated("inst-1").session_id


def test_port_fallback_reports_the_whole_range(held_port: int, router: zmq.Socket[bytes]
                                               ) -> None:
    config = ConnectionConfig(port=held_port, port_fallback=True, port_range_end=held_port)
    with pytest.raises(TransportError, match=rf"ports? {held_port}"):
        bind_listener(router, config)


def test_ipc_endpoint_in_a_private_directory(server_factory: Any, spawn: Any) -> None:
    server: ServerHarness = server_factory(short_config(transport="ipc"))
    assert server.pump is not None and server.pump.bound is not None
    endpoint = server.endpoint
    directory = server.pump.bound.ipc_dir
    assert endpoint.startswith("ipc://") and directory is not None
    assert server.pump.port is None
    assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700
    assert endpoint == f"ipc://{directory}/test.sock"

    secret = server.expect("echo-1")
    env = server.env("echo-1", secret)
    assert env["SPEAR_COMMUNICATION_TYPE"] == "ipc"
    assert "SPEAR_COMMUNICATION_PORT" not in env
    child = spawn(*ECHO_MODULE, env=env)
    server.authenticated("echo-1")
    assert server.echo("echo-1", b"over ipc") == b"over ipc"
    server.signal("echo-1", "stop")
    assert child.finish() == 0
    server.wait_for(Closed)

    server.stop_pump()
    assert not os.path.exists(directory)


def test_ipc_in_a_given_directory_is_left_in_place(tmp_path: Path,
                                                   router: zmq.Socket[bytes]) -> None:
    directory = tmp_path / "sockets"
    bound = bind_listener(router, ConnectionConfig(transport="ipc", ipc_dir=str(directory)))
    assert bound.endpoint == f"ipc://{directory}/spear.sock"
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    release_endpoint(bound)
    assert directory.is_dir()  # not ours to remove


def test_ipc_path_too_long(tmp_path: Path, router: zmq.Socket[bytes]) -> None:
    directory = tmp_path / ("d" * 120)
    with pytest.raises(TransportError, match="too long"):
        bind_listener(router, ConnectionConfig(transport="ipc", ipc_dir=str(directory)))


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.10"])
def test_non_loopback_needs_allow_remote(host: str) -> None:
    pump = RouterPump(lambda batch: None, ConnectionConfig(host=host))
    try:
        with pytest.raises(ConfigError, match="allow_remote"):
            pump.start()
        assert pump.port is None
    finally:
        pump.stop()


def test_allow_remote_needs_curve_keys(router: zmq.Socket[bytes]) -> None:
    with pytest.raises(ConfigError, match="curve_secret_key"):
        bind_listener(router, ConnectionConfig(host="0.0.0.0", allow_remote=True))


@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1", True), ("127.0.0.2", True), ("::1", True), ("localhost", True),
    ("0.0.0.0", False), ("::", False), ("192.0.2.10", False), ("10.0.0.1", False),
])
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_ipv6_loopback_binds(router: zmq.Socket[bytes]) -> None:
    router.setsockopt(zmq.IPV6, 1)
    try:
        bound = bind_listener(router, ConnectionConfig(host="::1"))
    except TransportError as exc:  # a host without IPv6
        pytest.skip(f"no IPv6 loopback here: {exc}")
    assert bound.endpoint.startswith("tcp://[::1]:") and bound.port


def test_client_reaches_ipc_from_type_and_path_alone(server_factory: Any, spawn: Any) -> None:
    """A client written from the seed's variables (no SPEAR_COMMUNICATION_ENDPOINT)."""
    server: ServerHarness = server_factory(short_config(transport="ipc"))
    secret = server.expect("echo-1")
    env = server.env("echo-1", secret, endpoint=False)
    assert "SPEAR_COMMUNICATION_ENDPOINT" not in env
    assert f"ipc://{env['SPEAR_COMMUNICATION_PATH']}" == server.endpoint
    child = spawn(*ECHO_MODULE, env=env)
    server.authenticated("echo-1")
    assert server.echo("echo-1", b"by path") == b"by path"
    server.signal("echo-1", "stop")
    assert child.finish() == 0
