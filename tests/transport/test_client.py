"""InstanceClient against a real server (conftest's ServerHarness): refusal, heartbeats,
reconnecting to a silent or restarted server, long handlers, signals and close, from_env."""

from __future__ import annotations

import logging
import socket
import threading
import time
from typing import Any

import pytest
from helpers import wait_until

from spear_actors import errors
from spear_actors.client import InstanceClient
from spear_actors.errors import AuthenticationError, ConfigError
from spear_actors.protocol import ExecuteResponse
from spear_actors.protocol.client import ClientEvent, HeartbeatAck
from spear_actors.protocol.server import AuthenticationFailed, Closed

from .conftest import (
    AUTH_PROBE,
    HEARTBEAT_INTERVAL,
    HEARTBEAT_TIMEOUT,
    INSTANCE_PROGRAM,
    WAIT,
    Clients,
    ServerHarness,
    new_secret,
    short_config,
    untimed,
)


class RecordingClient(InstanceClient):
    """An InstanceClient that also keeps every protocol event its I/O thread handles."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.events: list[ClientEvent] = []

    def _handle(self, event: object) -> None:
        self.events.append(event)  # type: ignore[arg-type]
        super()._handle(event)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- authentication ----------------------------------------------------------------------------

def test_wrong_secret_is_refused(server: ServerHarness, spawn: Any) -> None:
    server.expect("inst-1")
    child = spawn(AUTH_PROBE, env=server.env("inst-1", new_secret()))

    assert child.finish() == 3, child.err
    assert child.out.strip() == ("AuthenticationError: authentication refused: "
                                 "authentication failed")
    failed = server.wait_for(AuthenticationFailed)
    assert (failed.instance_id, failed.reason) == ("inst-1", "bad_secret")
    closed = server.wait_for(Closed, lambda c: c.connection_id == failed.connection_id)
    assert closed.reason == "auth_failed" and not closed.was_authenticated
    assert server.protocol.authenticated_count == 0


def test_unknown_instance_is_refused_in_process(server: ServerHarness,
                                                clients: Clients) -> None:
    client = clients.new(server, "nobody", new_secret())
    with pytest.raises(AuthenticationError, match=r"^authentication refused: "
                                                  r"authentication failed$"):
        client.connect(timeout=WAIT)
    assert server.wait_for(AuthenticationFailed).reason == "unknown_instance"


# -- heartbeats --------------------------------------------------------------------------------

def test_heartbeats_flow_both_ways(server: ServerHarness, clients: Clients) -> None:
    secret = server.expect("inst-1")
    client = clients.make(RecordingClient(server.endpoint, "inst-1", secret))
    client.connect(timeout=WAIT)
    clients.serve(client)

    def sequence() -> int:
        return server.heartbeat_sequence("inst-1") or 0

    def acks() -> list[int]:
        return [e.sequence for e in list(client.events) if isinstance(e, HeartbeatAck)]

    first = wait_until(sequence, WAIT)
    wait_until(lambda: sequence() >= first + 3, WAIT,
               message="the server sees the heartbeat sequence grow")
    wait_until(lambda: len(acks()) >= 3, WAIT, message="the client gets heartbeat acks")
    sequences = acks()
    assert sequences == sorted(sequences) and sequences[0] >= 1  # the server echoes them
    assert server.sent["HEARTBEAT"] >= 3
    assert not server.outputs(Closed), server.outputs()
    assert client.reconnects == 0


# -- a silent or restarted server ---------------------------------------------------------------

def test_silent_server_makes_the_client_reconnect(server: ServerHarness, clients: Clients,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="spear_actors.client")
    secret = server.expect("inst-1")
    client = clients.new(server, "inst-1", secret)
    first_session = client.connect(timeout=WAIT)
    clients.serve(client)
    first = server.authenticated("inst-1")

    server.go_silent()
    second = server.authenticated("inst-1", count=2)
    wait_until(lambda: client.reconnects == 1, WAIT)

    assert second.session_id != first.session_id
    assert second.routing_id != first.routing_id  # a fresh DEALER
    assert client.session_id == second.session_id != first_session
    assert server.echo("inst-1", b"after") == b"after"
    assert client.reconnects == 1
    attempts = [r for r in caplog.records if r.name == "spear_actors.client"
                and r.levelno == logging.WARNING and "reconnect attempt 1/" in r.getMessage()]
    assert attempts and "inst-1" in attempts[0].getMessage()
    assert secret not in caplog.text


def test_restarted_server_makes_the_client_reauthenticate(
        server_factory: Any, clients: Clients) -> None:
    # heartbeat_timeout longer than the server's ERROR rate limit (1 s): the old DEALER
    # reconnects to the new pump on its own and hears "not_authenticated" errors, which must
    # make it authenticate again rather than count as signs of life
    server: ServerHarness = server_factory(short_config(heartbeat_interval=0.5,
                                                        heartbeat_timeout=1.5))
    secret = server.expect("inst-1")
    client = clients.new(server, "inst-1", secret)
    client.connect(timeout=WAIT)
    clients.serve(client)
    first = server.authenticated("inst-1")
    endpoint = server.endpoint

    assert server.restart_pump() == endpoint
    second = server.authenticated("inst-1", count=2, timeout=5.0)
    wait_until(lambda: client.reconnects == 1, WAIT)

    assert second.session_id != first.session_id
    assert client.session_id == second.session_id
    assert server.echo("inst-1", b"after") == b"after"


def test_server_gone_for_good_ends_serve_with_an_error(server: ServerHarness,
                                                       clients: Clients) -> None:
    secret = server.expect("inst-1")
    client = clients.new(server, "inst-1", secret, max_retries=1, backoff_min=0.01,
                         backoff_max=0.02)
    client.connect(timeout=WAIT)
    serving = clients.serve(client)
    server.authenticated("inst-1")

    server.stop_pump()
    with pytest.raises(errors.TransportError, match="gave up after 1 attempts"):
        serving.wait(WAIT)
    assert client.stop_reason == "server_lost"


# -- long handlers -----------------------------------------------------------------------------

def test_long_handler_keeps_the_connection(server_factory: Any, spawn: Any) -> None:
    server: ServerHarness = server_factory(short_config())  # interval 0.1 s, timeout 0.3 s
    secret = server.expect("inst-1")
    child = spawn(INSTANCE_PROGRAM, env=server.env("inst-1", secret))
    server.authenticated("inst-1")

    sleep = 1.0
    assert sleep >= 3 * HEARTBEAT_TIMEOUT and HEARTBEAT_INTERVAL < HEARTBEAT_TIMEOUT
    started = time.monotonic()
    request_id = server.execute("inst-1", str(sleep).encode(), method="sleep")
    before = server.heartbeat_sequence("inst-1") or 0
    reply = server.reply(request_id, timeout=WAIT)
    elapsed = time.monotonic() - started

    assert isinstance(reply.payload, ExecuteResponse)
    took = reply.payload.processing_time  # the handler's own time (DESIGN.md section 12)
    assert reply.payload == ExecuteResponse(ok=True, data=b"slept 1.0", error=None,
                                            processing_time=took)
    assert took is not None and sleep <= took < elapsed
    assert elapsed >= sleep
    assert (server.heartbeat_sequence("inst-1") or 0) >= before + 3  # heartbeats went on
    assert not server.outputs(Closed), server.outputs()
    server.signal("inst-1", "stop")
    assert child.finish() == 0
    assert "serve returned: stop" in child.out


def test_handler_exception_becomes_an_error_response(server: ServerHarness,
                                                     clients: Clients) -> None:
    def handler(method: str, data: bytes) -> bytes:
        if method == "fail":
            raise ValueError(data.decode())
        return data

    secret = server.expect("inst-1")
    client = clients.new(server, "inst-1", secret)
    client.connect(timeout=WAIT)
    clients.serve(client, handler)

    reply = server.call("inst-1", b"bad input", method="fail")
    assert untimed(reply.payload) == ExecuteResponse(ok=False, data=b"",
                                            error="ValueError: bad input")
    assert server.echo("inst-1", b"ok") == b"ok"


# -- signals and closing -----------------------------------------------------------------------

@pytest.fixture
def connected(server: ServerHarness, clients: Clients) -> InstanceClient:
    secret = server.expect("inst-1")
    client = clients.new(server, "inst-1", secret)
    client.connect(timeout=WAIT)
    return client


def test_signal_stop_ends_serve(server: ServerHarness, clients: Clients,
                                connected: InstanceClient) -> None:
    serving = clients.serve(connected)
    server.signal("inst-1", "stop", "operator")
    assert serving.wait() == "stop"
    closed = server.closed("inst-1")
    assert closed.reason == "peer_closed"


def test_connection_close_from_the_server_ends_serve(
        server: ServerHarness, clients: Clients, connected: InstanceClient) -> None:
    serving = clients.serve(connected)
    server.close_instance("inst-1", "stopping")
    assert serving.wait() == "server closed: stopping"
    assert server.closed("inst-1").reason == "stopping"


def test_drain_finishes_in_flight_requests_first(
        server: ServerHarness, clients: Clients, connected: InstanceClient) -> None:
    entered = threading.Event()
    release = threading.Event()

    def handler(method: str, data: bytes) -> bytes:
        entered.set()
        assert release.wait(WAIT), "the test never released the handler"
        return b"done " + data

    serving = clients.serve(connected, handler)
    in_flight = server.execute("inst-1", b"first")
    assert entered.wait(WAIT)
    server.signal("inst-1", "drain")
    refused = server.call("inst-1", b"second")  # after the drain signal (same connection)
    assert untimed(refused.payload) == ExecuteResponse(ok=False, data=b"",
                                              error="instance is draining")
    assert not serving.done.is_set()  # still serving the request in flight

    release.set()
    assert untimed(server.reply(in_flight).payload) == ExecuteResponse(ok=True,
                                                                       data=b"done first",
                                                                       error=None)
    assert serving.wait() == "drain"
    assert server.closed("inst-1").reason == "peer_closed"


def test_close_sends_connection_close(server: ServerHarness, clients: Clients,
                                      connected: InstanceClient) -> None:
    serving = clients.serve(connected)
    connected.close("bye")
    assert serving.wait() == "bye"
    closed = server.closed("inst-1")
    assert closed.reason == "peer_closed" and closed.was_authenticated
    connected.close()  # idempotent


def test_close_without_serve(server: ServerHarness, connected: InstanceClient) -> None:
    connected.close()
    assert server.closed("inst-1").reason == "peer_closed"


# -- from_env and connect ----------------------------------------------------------------------

ENV = {"SPEAR_INSTANCE_ID": "inst-1", "SPEAR_SECRET": "s" * 64,
       "SPEAR_COMMUNICATION_TYPE": "tcp", "SPEAR_COMMUNICATION_PORT": "40123"}


@pytest.mark.parametrize("missing", ["SPEAR_INSTANCE_ID", "SPEAR_SECRET"])
def test_from_env_names_a_missing_variable(missing: str) -> None:
    env = {k: v for k, v in ENV.items() if k != missing}
    with pytest.raises(ConfigError, match=missing):
        InstanceClient.from_env(env)
    with pytest.raises(ConfigError, match=missing):
        InstanceClient.from_env({**env, missing: ""})


def test_from_env_endpoint_falls_back_to_the_port() -> None:
    client = InstanceClient.from_env(ENV)
    assert client.endpoint == "tcp://127.0.0.1:40123"
    assert client.instance_id == "inst-1"
    assert "s" * 64 not in repr(client)
    with_endpoint = InstanceClient.from_env({**ENV, "SPEAR_COMMUNICATION_ENDPOINT":
                                             "ipc:///tmp/x/spear.sock"})
    assert with_endpoint.endpoint == "ipc:///tmp/x/spear.sock"


def test_from_env_follows_the_communication_type() -> None:
    ipc = {k: v for k, v in ENV.items() if k != "SPEAR_COMMUNICATION_PORT"}
    ipc.update(SPEAR_COMMUNICATION_TYPE="ipc", SPEAR_COMMUNICATION_PATH="/tmp/x/spear.sock")
    assert InstanceClient.from_env(ipc).endpoint == "ipc:///tmp/x/spear.sock"
    assert InstanceClient.from_env({**ipc, "SPEAR_COMMUNICATION_ENDPOINT": "tcp://127.0.0.1:9"}
                                   ).endpoint == "tcp://127.0.0.1:9"  # the endpoint wins
    assert InstanceClient.from_env({**ENV, "SPEAR_COMMUNICATION_TYPE": ""}).endpoint == \
        "tcp://127.0.0.1:40123"  # tcp by default
    with pytest.raises(ConfigError, match="SPEAR_COMMUNICATION_PATH"):
        InstanceClient.from_env({**ipc, "SPEAR_COMMUNICATION_PATH": ""})
    with pytest.raises(ConfigError, match="tcp or ipc"):
        InstanceClient.from_env({**ENV, "SPEAR_COMMUNICATION_TYPE": "udp"})


@pytest.mark.parametrize("port", [None, "", "http", "0", "70000"])
def test_from_env_needs_a_port_without_an_endpoint(port: str | None) -> None:
    env = {k: v for k, v in ENV.items() if k != "SPEAR_COMMUNICATION_PORT"}
    if port is not None:
        env["SPEAR_COMMUNICATION_PORT"] = port
    with pytest.raises(ConfigError, match="SPEAR_COMMUNICATION_PORT"):
        InstanceClient.from_env(env)


def test_from_env_max_concurrency() -> None:
    assert InstanceClient.from_env({**ENV, "SPEAR_MAX_CONCURRENCY": "4"}).max_concurrency == 4
    assert InstanceClient.from_env({**ENV, "SPEAR_MAX_CONCURRENCY": "4"},
                                   max_concurrency=2).max_concurrency == 2


def test_connect_with_nobody_listening_times_out(clients: Clients) -> None:
    client = clients.make(InstanceClient.from_env({**ENV, "SPEAR_COMMUNICATION_PORT":
                                                   str(free_port())}))
    started = time.monotonic()
    with pytest.raises(errors.TimeoutError) as info:
        client.connect(timeout=0.5)
    elapsed = time.monotonic() - started
    assert isinstance(info.value, TimeoutError)  # the builtin too
    assert 0.45 <= elapsed < 2.0
    client.close()
