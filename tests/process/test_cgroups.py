"""Cgroups with the real kernel: limits, joining before exec, kill, stale cleanup, fallback.

The machines this runs on mount cgroup v1 controllers and a cgroup2 hierarchy without any of
them (``/sys/fs/cgroup/unified``): the v1 path runs entirely on the real kernel; the v2 path
runs its join and ``cgroup.kill`` on that real cgroup2 mount, and its limit and usage files
in a temporary directory laid out like cgroupfs (the test names say which). Every test
removes the cgroups it makes, even when it fails (and the suite checks that none is left).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from helpers import holds_for, wait_until

from spear_actors import ResourceLimits
from spear_actors.process.cgroups import Isolation, Layout, detect
from spear_actors.process.guardian import kill_cgroups, remove_cgroups
from spear_actors.process.instance_cgroup import InstanceCgroup
from spear_actors.process.wrapper import wrap

LAYOUT = detect()
needs_cgroups = pytest.mark.skipif(
    isinstance(LAYOUT, str) or os.geteuid() != 0,
    reason=f"cgroups not usable here: {LAYOUT if isinstance(LAYOUT, str) else 'not root'}")


@pytest.fixture
def isolation() -> Iterator[Isolation]:
    iso = Isolation.start()
    assert iso.uses_cgroups, iso.reason
    try:
        yield iso
    finally:
        assert iso.close()


def start_in(group: InstanceCgroup, argv: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
    return subprocess.Popen(wrap(argv, join=group.procs_files), start_new_session=True,
                            **kwargs)


def kill_and_reap(group: InstanceCgroup, *procs: subprocess.Popen[bytes]) -> None:
    group.kill()
    for proc in procs:
        proc.wait(5)
    wait_until(lambda: not group.members(), 5, message="the cgroup to empty")


@needs_cgroups
def test_the_spearlet_root_is_made_in_every_hierarchy_and_removed_at_close() -> None:
    iso = Isolation.start()
    try:
        assert iso.mode in ("cgroup v1", "cgroup v2") and iso.paths
        assert all(os.path.isdir(p) and os.path.basename(p).startswith(f"spear-{os.getpid()}-")
                   for p in iso.paths)
    finally:
        assert iso.close()
    assert not any(os.path.exists(p) for p in iso.paths)


@needs_cgroups
def test_the_program_is_in_its_cgroup_from_its_first_instruction(
        isolation: Isolation) -> None:
    group = isolation.create("first-1-1", ResourceLimits())
    assert group is not None
    # cat's first read of /proc/self/cgroup: the wrapper joined before exec'ing it
    out = subprocess.run(wrap(["/bin/cat", "/proc/self/cgroup"], join=group.procs_files),
                         capture_output=True, check=True, text=True).stdout
    lines = [line.split(":", 2) for line in out.splitlines()]
    ours = {path for _, _, path in lines if path.endswith("/first-1-1")}
    assert ours and len([ln for ln in lines if ln[2].endswith("/first-1-1")]) == len(
        group.paths)  # in every hierarchy (v1: one line per hierarchy)
    assert group.remove()


@needs_cgroups
def test_memory_limit_caps_resident_memory_not_address_space(isolation: Isolation) -> None:
    group = isolation.create("mem-1-1", ResourceLimits(memory_bytes=64 << 20))
    assert group is not None
    # 1 GiB of address space, never touched: fine under a 64 MiB cap on resident memory
    code = ("import mmap; m = mmap.mmap(-1, 1 << 30); m[:4096] = b'x' * 4096; "
            "print('mapped')")
    out = subprocess.run(wrap([sys.executable, "-c", code], join=group.procs_files),
                         check=False, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and "mapped" in out.stdout, out.stderr
    assert group.oom_kills() == 0
    assert group.remove()


@needs_cgroups
def test_a_fork_bomb_stops_at_max_processes(isolation: Isolation) -> None:
    group = isolation.create("bomb-1-1", ResourceLimits(max_processes=16))
    assert group is not None
    bomb = ("import os, signal\n"
            "n = 0\n"
            "try:\n"
            "    while True:\n"
            "        if os.fork() == 0:\n"
            "            os.close(1); signal.pause(); os._exit(0)\n"
            "        n += 1\n"
            "except BlockingIOError:\n"
            "    print(n, flush=True)\n"
            "signal.pause()\n")
    proc = start_in(group, [sys.executable, "-c", bomb], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        forked = int(proc.stdout.readline() or -1)
        assert 0 < forked < 16  # 16 tasks in all, the parent included
        assert len(group.members()) == 16 == group.usage()["pids"]
    finally:
        kill_and_reap(group, proc)
        if proc.stdout is not None:
            proc.stdout.close()
    assert group.remove()


@needs_cgroups
def test_a_busy_loop_with_cpus_0_2_uses_about_a_fifth_of_a_core(isolation: Isolation) -> None:
    group = isolation.create("busy-1-1", ResourceLimits(cpus=0.2))
    assert group is not None
    proc = start_in(group, [sys.executable, "-c", "while True: pass"])
    try:
        wait_until(group.members, 5, message="the busy loop to start")
        before, started = group.usage()["cpu_seconds"], time.monotonic()
        assert before is not None
        assert holds_for(lambda: proc.poll() is None, 2.0)
        used = group.usage()["cpu_seconds"] - before
        share = used / (time.monotonic() - started)
        # about 0.2: never much more (the quota), less only if the machine is overloaded
        assert 0.04 < share < 0.3, f"{share:.2f} of a core"
        cpu_dir = group.dirs.get("cpu", group.path)
        throttled = (Path(cpu_dir) / "cpu.stat").read_text().split()
        assert int(throttled[throttled.index("nr_throttled") + 1]) > 0  # the quota acted
    finally:
        kill_and_reap(group, proc)
    assert group.remove()


@needs_cgroups
def test_only_instances_with_a_quota_get_a_cpu_group_and_each_weighs_one_process(
        isolation: Isolation) -> None:
    plain = isolation.create("plain-1-1", ResourceLimits(memory_bytes=64 << 20))
    quota = [isolation.create(f"quota-{i}-1", ResourceLimits(cpus=0.5)) for i in (1, 2)]
    assert plain is not None and all(q is not None and "cpu" in q.dirs for q in quota)
    assert plain.version == 2 or "cpu" not in plain.dirs  # v1: no CPU group of its own
    v2 = plain.version == 2
    weight = Path(isolation.roots["cpu"], "cpu.weight" if v2 else "cpu.shares")
    unit = 100 if v2 else 1024
    assert int(weight.read_text()) == unit * (3 if v2 else 2)
    for group in (plain, *quota):
        assert group is not None and group.remove()
    assert int(weight.read_text()) == unit


@needs_cgroups
def test_kill_takes_a_process_that_left_the_session_and_was_orphaned(
        isolation: Isolation) -> None:
    group = isolation.create("escape-1-1", ResourceLimits())
    assert group is not None
    # setsid in a background job, then the shell waits: the sleep leads its own session
    proc = start_in(group, ["/bin/sh", "-c", "setsid sleep 300 & exec sleep 300"])
    try:
        def escaped_pid() -> int | None:
            others = [pid for pid in group.members() if pid != proc.pid]
            with contextlib.suppress(OSError):
                if others and os.getsid(others[0]) == others[0]:
                    return others[0]  # it has called setsid: a session of its own
            return None

        escaped = wait_until(escaped_pid, 5, message="the setsid child")
        assert os.getsid(escaped) != os.getsid(proc.pid)
    finally:
        kill_and_reap(group, proc)
    assert not psutil.pid_exists(escaped) or psutil.Process(escaped).status() == "zombie"
    assert group.remove()


@needs_cgroups
def test_a_new_spearlet_removes_the_cgroups_of_a_dead_one_and_kills_their_processes() -> None:
    assert isinstance(LAYOUT, Layout)
    dead = subprocess.Popen(["true"])
    dead.wait()  # a pid that is certainly dead now
    name = f"spear-{dead.pid}-1"
    roots = {c: os.path.join(base, name) for c, base in LAYOUT.bases.items()}
    for path in dict.fromkeys(roots.values()):
        os.mkdir(path)
    proc = None
    try:
        if "cpuset" in roots:
            parent = os.path.dirname(roots["cpuset"])
            for f in ("cpuset.cpus", "cpuset.mems"):
                Path(roots["cpuset"], f).write_text(Path(parent, f).read_text())
        left = InstanceCgroup.create(LAYOUT.version, roots, "old-1-1", ResourceLimits())
        proc = start_in(left, ["sleep", "300"])
        wait_until(lambda: left.members() == {proc.pid}, 5, message="sleep in the old cgroup")
        iso = Isolation.start()
        try:
            assert proc.wait(5) == -9
            assert not any(os.path.exists(p) for p in roots.values())
        finally:
            iso.close()
    finally:
        for path in dict.fromkeys(roots.values()):
            kill_cgroups({path: LAYOUT.version})
            remove_cgroups(path, 2.0)
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(5)


def test_without_usable_cgroups_limits_fall_back_to_rlimits_with_one_warning(
        captured_logs: list[Any]) -> None:
    iso = Isolation.start(layout="no cgroup filesystem here")
    assert iso.mode == "rlimit" and not iso.uses_cgroups
    assert iso.create("x-1-1", ResourceLimits(memory_bytes=1 << 30)) is None
    warnings = [m for m in captured_logs if m.record["level"].name == "WARNING"]
    assert len(warnings) == 1 and "WITHOUT cgroups (no cgroup filesystem here)" in str(
        warnings[0])
    assert iso.close()


# -- cgroup v2 ------------------------------------------------------------------------------

def _unified() -> str | None:
    """This process's cgroup in the real cgroup2 mount, if there is one with cgroup.kill."""
    base = "/sys/fs/cgroup/unified"
    if not os.path.isfile(os.path.join(base, "cgroup.controllers")):
        base = "/sys/fs/cgroup"
        if not os.path.isfile(os.path.join(base, "cgroup.controllers")):
            return None
    with open("/proc/self/cgroup") as f:
        own = next((line.strip()[3:] for line in f if line.startswith("0::")), None)
    return None if own is None else os.path.join(base, own.lstrip("/"))


@pytest.mark.skipif(_unified() is None or os.geteuid() != 0, reason="no cgroup2 mount")
def test_v2_join_and_cgroup_kill_on_the_real_cgroup2_mount() -> None:
    base = _unified()
    assert base is not None
    root = os.path.join(base, f"spear-{os.getpid()}-v2")
    os.mkdir(root)
    proc = None
    try:
        group = InstanceCgroup.create(2, {"unified": root}, "v2-1-1", ResourceLimits())
        if not os.path.exists(os.path.join(group.path, "cgroup.kill")):
            pytest.skip("kernel without cgroup.kill (< 5.14)")
        proc = start_in(group, ["/bin/sh", "-c", "setsid sleep 300 & exec sleep 300"])
        members = wait_until(lambda: len(m := group.members()) == 2 and m, 5,
                             message="both processes in the v2 cgroup")
        assert group.usage()["cpu_seconds"] is not None  # cpu.stat is always there on v2
        assert group.kill() == 0  # one write to cgroup.kill, no signal sent by us
        assert proc.wait(5) == -9
        wait_until(lambda: not group.members(), 5, message="the v2 cgroup to empty")
        assert not any(psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"
                       for p in members)
        assert group.remove()
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(5)
        kill_cgroups({root: 2})
        remove_cgroups(root, 2.0)


def test_v2_detection_limits_usage_and_oom_in_a_temporary_directory_laid_out_like_cgroupfs(
        tmp_path: Path) -> None:
    fs = tmp_path / "cgroup"
    own = fs / "system.slice" / "spearlet.service"
    own.mkdir(parents=True)
    (own / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    (own / "cgroup.subtree_control").write_text("")
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(f"30 25 0:26 / {fs} rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n")
    proc_cgroup = tmp_path / "cgroup.self"
    proc_cgroup.write_text("0::/system.slice/spearlet.service\n")

    layout = detect(str(mountinfo), str(proc_cgroup))
    assert isinstance(layout, Layout) and layout.mode == "cgroup v2"
    assert set(layout.bases) == {"memory", "cpu", "pids", "cpuset"}
    assert set(layout.bases.values()) == {str(own)}

    iso = Isolation.start(layout=layout)
    assert iso.mode == "cgroup v2" and len(iso.paths) == 1
    root = Path(iso.paths[0])
    assert (own / "cgroup.subtree_control").read_text() == "+memory +cpu +pids +cpuset"
    assert (root / "cgroup.subtree_control").read_text() == "+memory +cpu +pids +cpuset"
    group = iso.create("i-1-1", ResourceLimits(memory_bytes=64 << 20, cpus=0.5,
                                               max_processes=32, cpu_affinity=(1,)))
    assert group is not None and group.version == 2 and group.handles_affinity
    d = root / "i-1-1"
    assert group.procs_files == [str(d / "cgroup.procs")]
    assert (d / "memory.max").read_text() == str(64 << 20)
    assert (d / "cpu.max").read_text() == "50000 100000"
    assert (d / "pids.max").read_text() == "32"
    assert (d / "cpuset.cpus").read_text() == "1"

    (d / "cpu.stat").write_text("usage_usec 2500000\nuser_usec 2000000\n")
    (d / "memory.current").write_text("1048576\n")
    (d / "memory.peak").write_text("67108864\n")
    (d / "pids.current").write_text("3\n")
    (d / "memory.events").write_text("low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\n")
    assert group.usage() == {"cpu_seconds": 2.5, "memory_bytes": 1 << 20,
                             "memory_peak_bytes": 64 << 20, "pids": 3}
    assert group.oom_kills() == 1
    assert group.describe_limit() == "memory limit 64 MiB"
