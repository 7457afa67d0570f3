"""Handler instances forked from a zygote (DESIGN.md section 10), with real processes."""

from __future__ import annotations

import json
import os
import signal
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest
from helpers import wait_until

from spear_actors import ExecutionError, InstanceConfig, InstanceState, SpearSystem
from spear_actors.errors import ConfigError, SpearError
from spear_actors.tomlconfig import parse

from .support import FAST_RESTARTS, PROGRAMS, WAIT

PYTHONPATH = os.pathsep.join([str(PROGRAMS), *filter(None, [os.environ.get("PYTHONPATH")])])
ENV = {"PYTHONPATH": PYTHONPATH, "SOME_SETTING": "x"}


def handler(name: str, **kwargs: Any) -> InstanceConfig:
    kwargs.setdefault("restart", FAST_RESTARTS)
    kwargs.setdefault("env", ENV)
    return InstanceConfig(entry=f"handlers:{name}", **kwargs)


def spawned(name: str, **kwargs: Any) -> InstanceConfig:
    """The same handler in a spawned interpreter (no zygote)."""
    kwargs.setdefault("restart", FAST_RESTARTS)
    kwargs.setdefault("env", ENV)
    return InstanceConfig(command=[sys.executable, "-m", "spear_actors.zygote", "--serve",
                                   f"handlers:{name}"], **kwargs)


def describe(system: SpearSystem, instance_id: str) -> dict[str, Any]:
    system.wait_ready(instance_id, WAIT)
    return json.loads(system.execute(instance_id, b"", timeout=WAIT))  # type: ignore[no-any-return]


def zygote_processes() -> list[psutil.Process]:
    out = []
    for p in psutil.Process().children():
        try:
            if "spear_actors.zygote" in p.cmdline():
                out.append(p)
        except psutil.Error:
            continue
    return out


def test_a_forked_child_is_like_a_spawned_one(system: SpearSystem, tmp_path: Path) -> None:
    forked = system.create_instance("f", handler("describe", working_dir=str(tmp_path)))
    spawn = system.create_instance("s", spawned("describe", working_dir=str(tmp_path)))
    a, b = describe(system, forked), describe(system, spawn)
    assert a["cwd"] == b["cwd"] == str(tmp_path)
    env_a, env_b = dict(a["env"]), dict(b["env"])
    assert env_a.pop("SPEAR_INSTANCE_ID") == forked and env_b.pop("SPEAR_INSTANCE_ID") == spawn
    assert env_a.pop("SPEAR_SECRET") != env_b.pop("SPEAR_SECRET")
    assert env_a == env_b
    assert a["pgid"] == a["sid"] == a["pid"]
    assert b["pgid"] == b["sid"] == b["pid"]
    assert Counter(a["fds"].values()) == Counter(b["fds"].values()), (a["fds"], b["fds"])
    assert a["threads"] == b["threads"] and a["tasks"] == b["tasks"]
    assert psutil.Process(a["pid"]).ppid() in {z.pid for z in zygote_processes()}


def test_one_child_cannot_see_anothers_secret(system: SpearSystem) -> None:
    first = system.create_instance("f", handler("describe"))
    second = system.create_instance("f", handler("describe"))
    a, b = describe(system, first), describe(system, second)
    secret = a["env"]["SPEAR_SECRET"]
    assert secret not in json.dumps(b)
    for z in zygote_processes():
        assert secret not in json.dumps(z.environ())


def test_handler_errors_and_exit_codes(system: SpearSystem) -> None:
    iid = system.create_instance("flaky", handler("flaky"))
    first = system.wait_ready(iid, WAIT)
    assert system.execute(iid, b"ok", timeout=WAIT) == b"ok"
    with pytest.raises(ExecutionError, match="the handler raised"):
        system.execute(iid, b"", method="raise", timeout=WAIT)
    with pytest.raises(SpearError):
        system.execute(iid, b"", method="exit", timeout=WAIT)
    info = wait_until(lambda: (i := system.instance(iid)).restarts == 1
                      and i.state is InstanceState.READY and i, WAIT,
                      message="the restart after os._exit(3)")
    assert info and info.last_exit_code == 3 and info.pid != first.pid
    assert system.execute(iid, b"again", timeout=WAIT) == b"again"


def test_a_killed_zygote_is_restarted_and_its_children_keep_serving(
        system: SpearSystem) -> None:
    iid = system.create_instance("flaky", handler("flaky"))
    pid = system.wait_ready(iid, WAIT).pid
    (zygote,) = zygote_processes()
    tree = system.tree()  # the zygote is part of the tree it serves
    assert tree.to_dict()["runtime"]["zygotes"] == [
        {"pid": zygote.pid, "alive": True, "preload": [], "path": [], "children": 1}]
    assert f"ZygotePool restarts 0\n    │   └── Zygote[-] [alive] pid {zygote.pid}, 1 forked" \
        in str(tree)
    zygote.kill()
    new = wait_until(lambda: [z for z in zygote_processes() if z.pid != zygote.pid], WAIT,
                     message="a new zygote")
    assert new and len(new) == 1
    runtime = wait_until(lambda: (r := system.tree().to_dict()["runtime"])["zygotes"][0][
        "pid"] == new[0].pid and r, WAIT, message="the new zygote in the tree")
    assert runtime and runtime["zygote_restarts"] == 1 and runtime["zygotes"][0]["alive"]
    assert system.execute(iid, b"still", timeout=WAIT) == b"still"
    assert system.instance(iid).pid == pid
    other = system.create_instance("flaky", handler("flaky"))
    assert psutil.Process(system.wait_ready(other, WAIT).pid or 0).ppid() == new[0].pid
    os.kill(pid or 0, signal.SIGKILL)  # the orphan's exit is still seen, and it restarts
    info = wait_until(lambda: (i := system.instance(iid)).restarts == 1
                      and i.state is InstanceState.READY and i, WAIT,
                      message="the orphan's restart")
    assert info and info.last_exit_code in (-9, 255)


def test_create_stop_cycles_leave_nothing(system: SpearSystem) -> None:
    me = psutil.Process()

    def cycle() -> None:
        iid = system.create_instance("cycle", handler("flaky"))
        system.wait_ready(iid, WAIT)
        system.stop_instance(iid)

    cycle()
    (zygote,) = zygote_processes()
    fds, threads = me.num_fds(), me.num_threads()
    zygote_fds = zygote.num_fds()
    for _ in range(50):
        cycle()
    assert wait_until(lambda: me.num_fds() <= fds and zygote.num_fds() == zygote_fds, WAIT,
                      message=f"fds back to {fds}/{zygote_fds}")
    assert wait_until(lambda: me.num_threads() <= threads, WAIT, message="threads back")
    assert zygote.children() == [] and zygote.num_threads() == 1
    assert not [p for p in me.children() if p.status() == psutil.STATUS_ZOMBIE]


def test_limits_and_cgroup_apply_to_a_forked_child(system: SpearSystem) -> None:
    from spear_actors import ResourceLimits

    iid = system.create_instance("f", handler("describe"),
                                 ResourceLimits(max_open_files=200, memory_bytes=512 << 20))
    pid = describe(system, iid)["pid"]
    assert psutil.Process(pid).rlimit(psutil.RLIMIT_NOFILE) == (200, 200)
    if system.isolation != "rlimit":
        cgroup = Path(f"/proc/{pid}/cgroup").read_text()
        assert iid in cgroup


def test_output_is_relayed_line_by_line(system: SpearSystem, tmp_path: Path,
                                        captured_logs: list[Any]) -> None:
    (tmp_path / "talker.py").write_text(
        "import sys\nprint('hello from the handler')\n"
        "print('on stderr', file=sys.stderr)\n"
        "def handle(method, data):\n    return data\n")
    iid = system.create_instance("t", InstanceConfig(entry="talker:handle",
                                                     working_dir=str(tmp_path)))
    system.wait_ready(iid, WAIT)

    def lines() -> list[str]:
        return [r.record["message"] for r in captured_logs
                if r.record["extra"].get("instance") == iid]

    assert wait_until(lambda: {"hello from the handler", "on stderr"} <= set(lines()), WAIT,
                      message="the handler's output in the log")


@pytest.mark.parametrize("kwargs, match", [
    ({"command": ["x"], "entry": "a:b"}, "not both"),
    ({}, "command must be a non-empty list"),
    ({"entry": "nocolon"}, "package.module:handler"),
    ({"command": ["x"], "preload": ["json"]}, "preload goes with entry"),
    ({"entry": "a:b", "preload": "json"}, "list of module names"),
    ({"entry": "a:b", "prestart": -1}, "prestart must be an integer >= 0"),
])
def test_bad_handler_configs(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        InstanceConfig(**kwargs)


def test_entry_and_preload_from_toml() -> None:
    spec = parse('[[tasks]]\nname = "h"\nentry = "pkg.mod:handle"\npreload = ["json"]\n')
    config = spec.tasks[0].config
    assert config.entry == "pkg.mod:handle" and config.preload == ("json",)
    assert config.command == ()


def test_a_missing_entry_module_fails_the_instance(
        make_system: Callable[..., SpearSystem]) -> None:
    from spear_actors import RestartPolicy

    system = make_system()
    iid = system.create_instance("bad", InstanceConfig(
        entry="no_such_module_here:handle", restart=RestartPolicy(mode="temporary")))
    info = wait_until(lambda: (i := system.instance(iid)).state in (
        InstanceState.STOPPED, InstanceState.FAILED) and i, WAIT, message="the failure")
    assert info and info.last_exit_code == 1


def test_a_warm_pool_is_claimed_ready_and_refilled(system: SpearSystem) -> None:
    import time

    config = handler("flaky", prestart=2)
    first = system.create_instance("pool", config)
    system.wait_ready(first, WAIT)

    def idle() -> list[dict[str, Any]]:
        return [n for n in system.tree().to_dict()["instances"] if n["idle"]]

    members = wait_until(lambda: len(idle()) == 2 and all(n["state"] == "ready" for n in idle())
                         and idle(), WAIT, message="two idle READY members")
    assert members
    assert [i.id for i in system.instances("pool")] == [first]  # members are not listed
    assert " idle" in str(system.tree())
    mine = str(system.instance(first).pid).encode()
    for _ in range(20):  # members never get requests: every answer comes from `first`
        assert system.execute("pool", b"", method="pid", timeout=WAIT) == mine
    t0 = time.perf_counter()
    claimed = system.create_instance("pool", config)
    info = system.instance(claimed)
    elapsed = time.perf_counter() - t0
    assert claimed in {n["id"] for n in members}
    assert info.state is InstanceState.READY, info
    assert elapsed < 0.5
    assert system.execute(claimed, b"mine", timeout=WAIT) == b"mine"
    assert wait_until(lambda: len(idle()) == 2, WAIT, message="the pool refilled")
    assert {i.id for i in system.instances("pool")} == {first, claimed}


def test_scale_counts_claimed_instances_not_the_warm_pool(system: SpearSystem) -> None:
    config = handler("flaky", prestart=1)
    first = system.create_instance("sp", config)
    system.wait_ready(first, WAIT)

    def idle() -> set[str]:
        return {n["id"] for n in system.tree().to_dict()["instances"]
                if n["idle"] and n["task_id"] == "sp" and n["state"] == "ready"}

    (member,) = wait_until(idle, WAIT, message="one idle READY member")
    grown = system.scale("sp", 2)  # one more: the idle member is claimed, not counted
    assert grown == {"created": [member], "removed": []}
    assert {i.id for i in system.instances("sp")} == {first, member}
    (refill,) = wait_until(idle, WAIT, message="the pool refilled")
    assert system.scale("sp", 2) == {"created": [], "removed": []}  # 2 already, pool aside
    shrunk = system.scale("sp", 1)  # the newest claimed one goes, not the pool's member
    assert shrunk == {"created": [], "removed": [member]}
    assert idle() == {refill}
    removed = system.remove_task("sp")  # a removed task takes its pool with it
    assert set(removed) == {first, refill}
    assert not [n for n in system.tree().to_dict()["instances"] if n["task_id"] == "sp"]


def test_the_zygote_imports_only_what_serving_needs() -> None:
    import subprocess

    code = ("import sys, spear_actors.zygote; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & "
            "{'psutil', 'pykka', 'loguru', 'threading_actors', 'asyncio'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    assert out.strip() == "[]"


def test_network_none_puts_a_forked_child_in_its_own_network_namespace(
        make_system: Callable[..., SpearSystem]) -> None:
    from spear_actors import ConnectionConfig, ResourceLimits

    system = make_system(connection=ConnectionConfig(transport="ipc", heartbeat_interval=0.2,
                                                     heartbeat_timeout=0.6))
    iid = system.create_instance("n", handler("describe"), ResourceLimits(network="none"))
    pid = describe(system, iid)["pid"]
    assert os.readlink(f"/proc/{pid}/ns/net") != os.readlink("/proc/self/ns/net")


def test_a_warm_pool_of_command_instances(system: SpearSystem) -> None:
    config = InstanceConfig(command=[sys.executable, "-m", "spear_actors.examples.echo"],
                            prestart=1, restart=FAST_RESTARTS)
    first = system.create_instance("cmdpool", config)
    system.wait_ready(first, WAIT)
    assert wait_until(lambda: [n for n in system.tree().to_dict()["instances"]
                               if n["idle"] and n["state"] == "ready"], WAIT,
                      message="one idle READY member")
    claimed = system.create_instance("cmdpool", config)
    assert system.instance(claimed).state is InstanceState.READY
    assert system.execute(claimed, b"ok", timeout=WAIT) == b"ok"
