"""The control endpoint serves only its owner: a private run directory (0700) and run file
(0600), a token compared in constant time, every other request refused."""

from __future__ import annotations

import ast
import inspect
import json
import os
import stat
import textwrap
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zmq
from reliability.support import Systems

from spear_actors import AuthenticationError, SpearError
from spear_actors.control import REFUSED, Attached, ControlServer, RunInfo, attach
from spear_actors.protocol.auth import AuthPolicy


def request(endpoint: str, body: bytes, timeout: float = 5.0) -> dict[str, Any]:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sock = ctx.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, int(timeout * 1000))
    try:
        sock.connect(endpoint)
        sock.send(body)
        return dict(msgpack.unpackb(sock.recv(), raw=False))
    finally:
        sock.close(0)
        ctx.term()


def test_only_the_owner_can_use_the_control_endpoint(
        systems: Systems, tmp_path: Path, captured_logs: list[Any]) -> None:
    system = systems.start()
    run_dir = tmp_path / "run"
    run_dir.mkdir(mode=0o755)  # too open: it must be made private
    server = ControlServer(system, run_dir)
    try:
        info = server.start()
        assert stat.S_IMODE(os.stat(run_dir).st_mode) == 0o700
        run_file = Path(info.path)
        st = os.stat(run_file)
        assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == os.getuid()
        token = json.loads(run_file.read_text())["token"]
        assert len(token) >= 43  # 256 bits
        assert token not in repr(info)

        good = {"token": token, "op": "ping", "args": {}}
        assert request(info.endpoint, msgpack.packb(good))["ok"] is True
        bad_tokens: list[Any] = ["", "x" * len(token), token[:-1], token + "x", token.upper(),
                                 None, 12345, [token], token.encode()]
        for bad in bad_tokens:
            reply = request(info.endpoint, msgpack.packb({**good, "token": bad}))
            assert reply == {"ok": False, "code": "refused", "error": REFUSED}, (bad, reply)
        for body in (msgpack.packb({"op": "ping"}), b"\xc1garbage", msgpack.packb([token])):
            reply = request(info.endpoint, body)
            assert reply == {"ok": False, "code": "refused", "error": REFUSED}, (body, reply)
        assert server.refused == len(bad_tokens) + 3

        # the client side: the right token works, a wrong one raises
        with attach(run_dir, timeout=5) as handle:
            assert handle.ping()["pid"] == os.getpid()
        stolen = RunInfo(endpoint=info.endpoint, token="y" * len(token), pid=info.pid,
                         started_at=info.started_at)
        with Attached(stolen) as intruder, pytest.raises(AuthenticationError):
            intruder.tree()
    finally:
        server.close()
    assert not run_file.exists()
    logs = "\n".join(str(m) for m in captured_logs)
    assert "control request refused" in logs and token not in logs


def test_a_run_directory_that_is_a_symlink_is_refused(systems: Systems, tmp_path: Path
                                                      ) -> None:
    system = systems.start()
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    link = tmp_path / "link"
    link.symlink_to(real)
    server = ControlServer(system, link)
    try:
        with pytest.raises(SpearError, match="symlink"):
            server.start()
    finally:
        server.close()


@pytest.mark.parametrize(("function", "secret"), [
    (ControlServer._accept, "self._token"), (AuthPolicy._judge, "expected")],
    ids=["control-token", "instance-secret"])
def test_secrets_are_compared_in_constant_time(function: Any, secret: str) -> None:
    tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
    calls = [node for node in ast.walk(tree) if isinstance(node, ast.Call)
             and ast.unparse(node.func) == "hmac.compare_digest"]
    assert any(secret in ast.unparse(call) for call in calls), \
        f"{function.__qualname__} does not check {secret} with hmac.compare_digest"
    # and never with a plain comparison
    comparisons = [ast.unparse(node) for node in ast.walk(tree)
                   if isinstance(node, ast.Compare) and any(
                       isinstance(op, (ast.Eq, ast.NotEq)) for op in node.ops)
                   and ("token" in ast.unparse(node) or secret in ast.unparse(node))]
    assert not comparisons, comparisons
