"""Remote control over CURVE (DESIGN.md section 8), for real across two network namespaces
joined by a veth pair: ``up`` runs in one, the clients in the other. The namespaces (and so
the veth pair) are always deleted; the addresses are private and live only inside them."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq.auth
from helpers import wait_until

from .support import CLI, run_cli

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None,
                                reason="needs root and iproute2 (network namespaces)")

SUBNET = f"10.213.{os.getpid() % 250 + 1}"
SERVER_ADDR, CLIENT_ADDR = f"{SUBNET}.1", f"{SUBNET}.2"
PORT = 47213
TOML = """
[control]
endpoint = "tcp://{addr}:{port}"
server_secret_key_file = "keys/server.key_secret"
authorized_keys_file = "authorized_keys"

[[tasks]]
name = "echo"
command = ["{{python}}", "-m", "spear_actors.examples.echo"]
stop_timeout = 2.0
"""


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@pytest.fixture
def namespaces() -> Iterator[tuple[str, str]]:
    tag = f"{os.getpid() % 100000}"
    server, client = f"spear13s{tag}", f"spear13c{tag}"
    try:
        _ip("netns", "add", server)
        _ip("netns", "add", client)
        _ip("link", "add", f"s13s{tag}", "type", "veth", "peer", "name", f"s13c{tag}")
        _ip("link", "set", f"s13s{tag}", "netns", server)
        _ip("link", "set", f"s13c{tag}", "netns", client)
        for ns, dev, addr in ((server, f"s13s{tag}", SERVER_ADDR),
                              (client, f"s13c{tag}", CLIENT_ADDR)):
            _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
            _ip("-n", ns, "link", "set", dev, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
        yield server, client
    finally:
        for ns in (server, client):  # deleting a namespace deletes its end of the veth
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10,
                           check=False)
        subprocess.run(["ip", "link", "del", f"s13s{tag}"], capture_output=True, timeout=10,
                       check=False)


def _keys(tmp_path: Path) -> tuple[str, Path, Path]:
    keys = tmp_path / "keys"
    keys.mkdir()
    for _ in range(5000):  # a server key that starts with '-', as one in 85 does: argparse
        server_public, _ = zmq.auth.create_certificates(keys, "server")  # took it for an option
        if zmq.auth.load_certificate(server_public)[0].startswith(b"-"):
            break
    else:
        raise AssertionError("no Z85 key starting with '-' in 5000 tries")
    client_public, client_secret = zmq.auth.create_certificates(keys, "client")
    _, intruder_secret = zmq.auth.create_certificates(keys, "intruder")
    public, _ = zmq.auth.load_certificate(client_public)
    (tmp_path / "authorized_keys").write_text(f"# the operator\n{public.decode()}\n")
    server_key, _ = zmq.auth.load_certificate(server_public)
    return server_key.decode(), Path(client_secret), Path(intruder_secret)


def test_remote_control_across_namespaces(tmp_path: Path,
                                          namespaces: tuple[str, str]) -> None:
    server_ns, client_ns = namespaces
    server_key, client_cert, intruder_cert = _keys(tmp_path)
    config = tmp_path / "spear.toml"
    config.write_text(TOML.format(addr=SERVER_ADDR, port=PORT))
    log = tmp_path / "up.log"
    with open(log, "w") as out:
        up = subprocess.Popen(["ip", "netns", "exec", server_ns, *CLI, "up", "--config",
                               str(config), "--run-dir", str(tmp_path / "run")],
                              stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        def serving() -> bool:
            assert up.poll() is None, log.read_text()
            return "instances ready" in log.read_text() and "remote control on" in \
                log.read_text()

        wait_until(serving, 30, message="up serving remote control")
        remote = ["--endpoint", f"tcp://{SERVER_ADDR}:{PORT}", "--server-key", server_key]

        def client(*args: str, cert: Path = client_cert) -> subprocess.CompletedProcess[str]:
            return subprocess.run(["ip", "netns", "exec", client_ns, *CLI, *remote,
                                   "--client-key-file", str(cert), *args],
                                  capture_output=True, text=True, timeout=30, check=False)

        status = client("status", "--timeout", "5")
        assert status.returncode == 0, status.stderr
        assert "echo-1" in status.stdout and "ready" in status.stdout
        answer = client("execute", "echo", "over the wire")
        assert (answer.returncode, answer.stdout) == (0, "over the wire"), answer.stderr
        t0 = time.monotonic()
        refused = client("status", "--timeout", "2", cert=intruder_cert)
        assert refused.returncode != 0 and "did not answer" in refused.stderr
        assert time.monotonic() - t0 < 15
        # not reachable from the client namespace without CURVE: no plain endpoint there
        # (the token endpoint stays on the server's loopback)
        assert client("shutdown").returncode == 0
        assert up.wait(20) == 0, log.read_text()
    finally:
        if up.poll() is None:
            up.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                up.wait(15)
        if up.poll() is None:
            up.kill()
            up.wait(5)


def test_beyond_loopback_without_keys_is_a_config_error(tmp_path: Path) -> None:
    config = tmp_path / "spear.toml"
    config.write_text('[control]\nendpoint = "tcp://0.0.0.0:47213"\n')
    done = run_cli("up", "--config", str(config), "--run-dir", str(tmp_path / "run"))
    assert done.returncode == 2
    assert "control.endpoint" in done.stderr and "CURVE" in done.stderr
