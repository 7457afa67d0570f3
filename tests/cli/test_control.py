"""The control endpoint in-process: token checks, run file, timeouts, operator actions."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
import types
from collections.abc import Iterator
from pathlib import Path

import msgpack
import pytest
import zmq
from helpers import wait_until

from spear_actors import (
    AuthenticationError,
    ConnectionConfig,
    ConnectionState,
    InstanceConfig,
    InstanceState,
    ResourceLimits,
    SpearError,
    SpearSystem,
    SystemConfig,
    TimeoutError,
)
from spear_actors.control import (
    REFUSED,
    Attached,
    ControlServer,
    NotRunning,
    RunInfo,
    attach,
    claim_run_dir,
    plain,
    tree_from_dict,
)

ECHO = InstanceConfig(command=[sys.executable, "-m", "spear_actors.examples.echo"],
                      prefetch=4, stop_timeout=2.0)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[SpearSystem, ControlServer, Path]]:
    system = SpearSystem.start(SystemConfig(connection=ConnectionConfig(
        heartbeat_interval=0.5, heartbeat_timeout=1.5)))
    run_dir = tmp_path / "run"
    server = ControlServer(system, run_dir)
    try:
        server.start()
        yield system, server, run_dir
    finally:
        server.close()
        system.shutdown()


def _raw(endpoint: str, body: bytes, timeout: float = 5.0) -> dict[str, object]:
    context = zmq.Context()
    sock = context.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, int(timeout * 1000))
    try:
        sock.connect(endpoint)
        sock.send(body)
        reply = msgpack.unpackb(sock.recv(), raw=False)
        assert isinstance(reply, dict)
        return reply
    finally:
        sock.close(0)
        context.term()


def test_wrong_or_missing_token_is_refused(served: tuple[SpearSystem, ControlServer, Path]
                                           ) -> None:
    _, server, run_dir = served
    endpoint = json.loads((run_dir / "control.json").read_text())["endpoint"]
    bodies = [msgpack.packb({"token": "x" * 43, "op": "tree", "args": {}}),
              msgpack.packb({"op": "tree"}),
              msgpack.packb({"token": 12, "op": "stop_instance", "args": {"id": "a"}}),
              b"\xc1 not msgpack at all"]
    for body in bodies:
        assert _raw(endpoint, body) == {"ok": False, "code": "refused", "error": REFUSED}
    assert server.refused == len(bodies)
    with attach(run_dir) as spear:
        assert spear.metrics()["control"]["refused"] == len(bodies)
        bad = Attached(RunInfo(endpoint=endpoint, token="wrong", pid=os.getpid(),
                               started_at=0.0))
        with bad, pytest.raises(AuthenticationError, match=REFUSED):
            bad.tree()


def test_unknown_op_and_bad_arguments(served: tuple[SpearSystem, ControlServer, Path]) -> None:
    _, _, run_dir = served
    with attach(run_dir) as spear:
        with pytest.raises(SpearError, match="unknown op 'launch_missiles'"):
            spear.request("launch_missiles")
        with pytest.raises(SpearError, match="missing argument 'id'"):
            spear.request("restart_instance")
        with pytest.raises(SpearError, match="no instance 'nope'"):
            spear.restart_instance("nope")
        with pytest.raises(SpearError, match=r"config\.command"):
            spear.request("create_instance", {"task_id": "t", "config": {"command": "x"}})


def test_run_dir_and_file_are_private(served: tuple[SpearSystem, ControlServer, Path]) -> None:
    _, server, run_dir = served
    assert stat.S_IMODE(run_dir.stat().st_mode) == 0o700
    run_file = run_dir / "control.json"
    assert stat.S_IMODE(run_file.stat().st_mode) == 0o600
    data = json.loads(run_file.read_text())
    assert data["pid"] == os.getpid() and len(data["token"]) >= 43
    assert data["endpoint"].startswith("tcp://127.0.0.1:")
    server.close()
    assert not run_file.exists()


def test_existing_run_dir_is_tightened_and_a_live_owner_refused(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir(mode=0o755)
    os.chmod(run_dir, 0o755)
    claim_run_dir(run_dir)
    assert stat.S_IMODE(run_dir.stat().st_mode) == 0o700
    (run_dir / "control.json").write_text(json.dumps(
        {"endpoint": "tcp://127.0.0.1:1", "token": "t", "pid": 1, "started_at": 0}))
    with pytest.raises(SpearError, match="another spear-actors \\(pid 1\\)"):
        claim_run_dir(run_dir)


def test_attach_to_nothing(tmp_path: Path) -> None:
    with pytest.raises(NotRunning, match="no run file"):
        attach(tmp_path)
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True, timeout=10)
    (tmp_path / "control.json").write_text(json.dumps(
        {"endpoint": "tcp://127.0.0.1:1", "token": "t", "pid": int(done.stdout),
         "started_at": 0}))
    with pytest.raises(NotRunning, match="stale run file"):
        attach(tmp_path)


def test_request_timeout_replaces_the_socket() -> None:
    context = zmq.Context()
    mute = context.socket(zmq.ROUTER)  # accepts requests, never answers
    mute.setsockopt(zmq.LINGER, 0)
    port = mute.bind_to_random_port("tcp://127.0.0.1")
    handle = Attached(RunInfo(endpoint=f"tcp://127.0.0.1:{port}", token="t", pid=os.getpid(),
                              started_at=0.0), timeout=0.2)
    try:
        for _ in range(2):  # a stuck REQ socket would fail the second time with EFSM
            started = time.monotonic()
            with pytest.raises(TimeoutError, match="did not answer 'ping'"):
                handle.ping()
            assert time.monotonic() - started < 2
    finally:
        handle.close()
        mute.close(0)
        context.term()


def test_operator_actions(served: tuple[SpearSystem, ControlServer, Path]) -> None:
    system, _, run_dir = served
    with attach(run_dir, timeout=5) as spear:
        iid = spear.create_instance("echo", ECHO, ResourceLimits(max_open_files=256))
        info = spear.wait_ready(iid, timeout=15)
        assert info.task_id == "echo" and info.state is InstanceState.READY
        assert system.execute(iid, b"ping", timeout=10) == b"ping"
        (conn,) = spear.connections()
        assert isinstance(conn, ConnectionState) and conn.instance_id == iid
        tree = spear.tree()
        assert f"InstanceActor[{iid}] READY pid {info.pid}" in repr(tree)
        stopped = spear.stop_instance(iid, timeout=10)
        assert stopped.state is InstanceState.STOPPED
        kinds = [e.kind for e in spear.events(limit=None)]
        assert kinds.index("InstanceReady") < kinds.index("InstanceStopped")
        wait_until(lambda: spear.events(limit=5, kinds={"InstanceStopped"}), 5)


def test_create_instance_takes_paths_from_the_callers_directory(
        served: tuple[SpearSystem, ControlServer, Path], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """`attach().create_instance(["python", "upper.py"])` runs ./upper.py of the caller, not
    a file of that name beside the spearlet (which starts instances elsewhere)."""
    _, _, run_dir = served
    app = tmp_path / "app"
    (app / "bin").mkdir(parents=True)
    (app / "upper.py").write_text(
        "from spear_actors.client import InstanceClient\n"
        "InstanceClient.from_env().serve(lambda method, data: data.upper())\n")
    (app / "bin" / "upper").write_text(f"#!/bin/sh\nexec {sys.executable} ../upper.py\n")
    (app / "bin" / "upper").chmod(0o755)
    monkeypatch.chdir(app)
    with attach(run_dir, timeout=5) as spear:
        by_argument = spear.create_instance(
            "upper", InstanceConfig(command=[sys.executable, "upper.py"], stop_timeout=2))
        assert spear.wait_ready(by_argument, timeout=15).state is InstanceState.READY
        assert spear.execute(by_argument, b"abc", timeout=10) == b"ABC"
        # a relative program path and a relative working_dir, both from here
        by_program = spear.create_instance(
            "upper", InstanceConfig(command=["bin/upper"], working_dir="bin", stop_timeout=2))
        assert spear.wait_ready(by_program, timeout=15).state is InstanceState.READY
        assert spear.execute(by_program, b"xyz", timeout=10) == b"XYZ"
        for iid in (by_argument, by_program):
            spear.stop_instance(iid, timeout=10)


def test_tree_round_trips_through_plain_data(served: tuple[SpearSystem, ControlServer, Path]
                                             ) -> None:
    system, _, _ = served
    iid = system.create_instance("echo", ECHO)
    system.wait_ready(iid, timeout=15)
    tree = system.tree()
    wire = msgpack.unpackb(msgpack.packb(plain(tree.to_dict())), raw=False)
    again = tree_from_dict(wire)
    assert repr(again) == repr(tree)
    assert again.to_dict() == tree.to_dict()


def test_plain_data() -> None:
    config = plain(InstanceConfig(command=["a", "b"], env={"K": "v"}))
    assert config["command"] == ["a", "b"] and config["env"] == {"K": "v"}
    assert config["restart"]["mode"] == "permanent"
    assert plain(InstanceState.READY) == "ready"
    assert plain(types.MappingProxyType({1: (2, 3)})) == {"1": [2, 3]}
