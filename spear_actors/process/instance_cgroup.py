"""One instance's cgroup: its limits, its usage, its OOM kills, killing and removing it.

:class:`InstanceCgroup` is made by :meth:`~spear_actors.process.cgroups.Isolation.create` (in
the instance actor's thread) before the fork, with the limits already written, so the exec
wrapper (:mod:`.wrapper`) puts the child in it before the program runs. Every method is a few
reads or writes of cgroupfs and is safe from any thread: the instance actor kills and removes
it, the ProcessWatcher-driven :class:`~spear_actors.process.ManagedProcess` stops kill it, the
MonitorActor samples :meth:`~InstanceCgroup.usage`.

cgroup v1 keeps one directory per hierarchy (memory, cpuacct, pids, freezer; cpu only with a
``cpus`` quota and cpuset only with an affinity, see :func:`_joins_v1`); v2 one directory for
all controllers. Files used, v1 / v2:

=========== ======================================== ===================================
limit/usage v1                                       v2
=========== ======================================== ===================================
memory      memory.limit_in_bytes (+ memsw)          memory.max (+ memory.swap.max = 0)
cpus        cpu.cfs_quota_us / cpu.cfs_period_us     cpu.max
processes   pids.max                                 pids.max
affinity    cpuset.cpus (cpuset.mems from parent)    cpuset.cpus where delegated
cpu seconds cpuacct.usage (ns)                       cpu.stat usage_usec
memory now  memory.usage_in_bytes                    memory.current
peak        memory.max_usage_in_bytes                memory.peak (kernel >= 5.19)
OOM kills   memory.oom_control ``oom_kill``          memory.events ``oom_kill``
kill        freezer: freeze, SIGKILL all, thaw       cgroup.kill
=========== ======================================== ===================================
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Mapping
from typing import Any

from ..config import ResourceLimits
from .guardian import cgroup_members, kill_cgroups, remove_cgroups

__all__ = ["CFS_PERIOD_US", "InstanceCgroup", "format_bytes"]

CFS_PERIOD_US = 100_000
"""The CPU quota period: ``cpus=0.5`` is 50 ms of CPU time in every 100 ms."""
REMOVE_WAIT = 1.0
"""Bound on waiting for a killed cgroup's members to be gone before it can be removed."""


def format_bytes(n: int) -> str:
    """``67108864`` -> ``"64 MiB"`` (the unit that gives a whole or short number)."""
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            value = n / (1 << shift)
            return f"{value:.0f} {unit}" if value == int(value) else f"{value:.1f} {unit}"
    return f"{n} B"


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def _read_int(path: str) -> int | None:
    text = _read(path)
    try:
        return None if text is None else int(text.split()[0])
    except (ValueError, IndexError):
        return None


def _read_key(path: str, key: str) -> int | None:
    """The value of ``key`` in a flat-keyed file (``oom_kill 1``)."""
    for line in (_read(path) or "").splitlines():
        name, _, value = line.partition(" ")
        if name == key:
            with contextlib.suppress(ValueError):
                return int(value)
    return None


def _write(path: str, value: str) -> None:
    """Write one cgroupfs file; raises OSError naming it."""
    try:
        with open(path, "w") as f:
            f.write(value)
    except OSError as exc:
        raise OSError(exc.errno, f"cannot write {value!r} to {path}: {exc.strerror}") from None


def _joins_v1(controller: str, roots: Mapping[str, str], limits: ResourceLimits) -> bool:
    """Whether the instance gets a cgroup of its own in this v1 hierarchy.

    Not in ``cpu`` without a quota: a CFS group weighs as much as ONE process against its
    siblings, so instances in groups of their own, all under the spearlet's, would share one
    process's worth of CPU when the machine is busy (20 instances starting at once took 3-4
    times longer). Not in ``cpuset`` without an affinity (nothing to enforce). A hierarchy
    co-mounted with ``cpu`` (``cpu,cpuacct``) follows ``cpu``."""
    if controller == "cpuset":
        return limits.cpu_affinity is not None
    if controller == "cpu" or roots.get(controller) == roots.get("cpu"):
        return limits.cpus is not None
    return True


class InstanceCgroup:
    """The cgroup of one instance generation (see the module docstring)."""

    def __init__(self, version: int, dirs: Mapping[str, str], limits: ResourceLimits,
                 handles_affinity: bool) -> None:
        self.version = version
        self.dirs = dict(dirs)
        """Controller -> directory (v2: the same directory for every controller)."""
        self.limits = limits
        self.handles_affinity = handles_affinity
        """True if ``limits.cpu_affinity`` is a cpuset here (else: sched_setaffinity)."""
        self.on_removed: Callable[[InstanceCgroup], None] | None = None
        """Called once, by the first :meth:`remove` (its owner's bookkeeping)."""

    def __repr__(self) -> str:
        return f"<InstanceCgroup v{self.version} {self.path}>"

    @classmethod
    def create(cls, version: int, roots: Mapping[str, str], name: str,
               limits: ResourceLimits) -> InstanceCgroup:
        """Make the directories ``roots[controller]/name`` and write ``limits`` into them.

        A directory left by a generation of the same name is emptied and replaced. Raises
        OSError (nothing is left behind then)."""
        dirs = {ctrl: os.path.join(root, name) for ctrl, root in roots.items()
                if version == 2 or _joins_v1(ctrl, roots, limits)}
        handles_affinity = "cpuset" in dirs
        group = cls(version, dirs, limits, handles_affinity)
        try:
            for path in group.paths:
                if os.path.isdir(path):
                    kill_cgroups({path: version})
                    remove_cgroups(path, REMOVE_WAIT)
                os.mkdir(path, 0o755)
            if version == 2:
                group._limit_v2(limits)
            else:
                group._limit_v1(limits)
        except OSError:
            group.remove()
            raise
        return group

    @property
    def paths(self) -> list[str]:
        """Every distinct directory of this cgroup."""
        return list(dict.fromkeys(self.dirs.values()))

    @property
    def path(self) -> str:
        """The directory that names it: the freezer's on v1, the only one on v2."""
        return self.dirs.get("freezer") or self.paths[0]

    @property
    def procs_files(self) -> list[str]:
        """The ``cgroup.procs`` files a process writes itself into to join (every hierarchy)."""
        return [os.path.join(path, "cgroup.procs") for path in self.paths]

    # -- limits --------------------------------------------------------------------------------
    def _limit_v1(self, limits: ResourceLimits) -> None:
        d = self.dirs
        if "cpuset" in d:  # an empty cpuset takes no process: inherit, or the affinity
            parent = os.path.dirname(d["cpuset"])
            cpus = (",".join(map(str, limits.cpu_affinity)) if limits.cpu_affinity
                    else (_read(os.path.join(parent, "cpuset.cpus")) or "").strip())
            _write(os.path.join(d["cpuset"], "cpuset.cpus"), cpus)
            mems = (_read(os.path.join(parent, "cpuset.mems")) or "").strip()
            _write(os.path.join(d["cpuset"], "cpuset.mems"), mems)
        if limits.memory_bytes is not None:
            _write(os.path.join(d["memory"], "memory.limit_in_bytes"), str(limits.memory_bytes))
            swap = os.path.join(d["memory"], "memory.memsw.limit_in_bytes")
            if os.path.exists(swap):  # memory + swap: no escaping the limit into swap
                _write(swap, str(limits.memory_bytes))
        if limits.cpus is not None:
            _write(os.path.join(d["cpu"], "cpu.cfs_period_us"), str(CFS_PERIOD_US))
            _write(os.path.join(d["cpu"], "cpu.cfs_quota_us"), str(self._quota(limits.cpus)))
        if limits.max_processes is not None:
            _write(os.path.join(d["pids"], "pids.max"), str(limits.max_processes))

    def _limit_v2(self, limits: ResourceLimits) -> None:
        path = self.path
        if limits.memory_bytes is not None:
            _write(os.path.join(path, "memory.max"), str(limits.memory_bytes))
            swap = os.path.join(path, "memory.swap.max")
            if os.path.exists(swap):
                _write(swap, "0")
        if limits.cpus is not None:
            _write(os.path.join(path, "cpu.max"), f"{self._quota(limits.cpus)} {CFS_PERIOD_US}")
        if limits.max_processes is not None:
            _write(os.path.join(path, "pids.max"), str(limits.max_processes))
        if limits.cpu_affinity is not None and self.handles_affinity:
            _write(os.path.join(path, "cpuset.cpus"), ",".join(map(str, limits.cpu_affinity)))

    @staticmethod
    def _quota(cpus: float) -> int:
        return max(1000, round(cpus * CFS_PERIOD_US))  # the kernel's minimum is 1 ms

    # -- usage ---------------------------------------------------------------------------------
    def _file(self, controller: str, name: str) -> str | None:
        base = self.dirs.get(controller)
        return None if base is None else os.path.join(base, name)

    def usage(self) -> dict[str, Any]:
        """``{cpu_seconds, memory_bytes, memory_peak_bytes, pids}`` now (None: unknown)."""
        if self.version == 2:
            usec = _read_key(os.path.join(self.path, "cpu.stat"), "usage_usec")
            cpu = None if usec is None else usec / 1e6
            memory = _read_int(os.path.join(self.path, "memory.current"))
            pids = _read_int(os.path.join(self.path, "pids.current"))
        else:
            acct = self._file("cpuacct", "cpuacct.usage")
            nsec = None if acct is None else _read_int(acct)
            cpu = None if nsec is None else nsec / 1e9
            mem_file = self._file("memory", "memory.usage_in_bytes")
            memory = None if mem_file is None else _read_int(mem_file)
            pids_file = self._file("pids", "pids.current")
            pids = None if pids_file is None else _read_int(pids_file)
        return {"cpu_seconds": cpu, "memory_bytes": memory,
                "memory_peak_bytes": self.peak_bytes(), "pids": pids}

    def peak_bytes(self) -> int | None:
        """The most memory the cgroup has used (None where the kernel does not say)."""
        if self.version == 2:
            return _read_int(os.path.join(self.path, "memory.peak"))
        path = self._file("memory", "memory.max_usage_in_bytes")
        return None if path is None else _read_int(path)

    def oom_kills(self) -> int:
        """How many processes of the cgroup the OOM killer has killed."""
        if self.version == 2:
            return _read_key(os.path.join(self.path, "memory.events"), "oom_kill") or 0
        path = self._file("memory", "memory.oom_control")
        count = None if path is None else _read_key(path, "oom_kill")
        if count is None and path is not None:  # kernel < 4.13: hitting the limit is the hint
            count = 1 if (_read_int(self._file("memory", "memory.failcnt") or "") or 0) else 0
        return count or 0

    def describe_limit(self) -> str:
        """``memory limit 64 MiB`` (what an OOM kill reason names)."""
        if self.limits.memory_bytes is None:
            return "no memory limit of its own"
        return f"memory limit {format_bytes(self.limits.memory_bytes)}"

    # -- members -------------------------------------------------------------------------------
    def members(self) -> set[int]:
        """Pids of the live processes in the cgroup (whatever their session or group)."""
        pids: set[int] = set()
        for path in self.paths:
            pids |= cgroup_members(path)
        return pids

    def kill(self) -> int:
        """SIGKILL every process in the cgroup at once (v2 ``cgroup.kill``; v1 freeze, kill,
        thaw), so that none escapes by forking, ``setsid`` or leaving the process group.
        Returns how many signals were sent (0 with cgroup.kill)."""
        return kill_cgroups(dict.fromkeys(self.paths, self.version))

    def remove(self, timeout: float = REMOVE_WAIT) -> bool:
        """Kill what is left and remove the directories; True if none is left. Idempotent."""
        if any(os.path.isdir(p) for p in self.paths) and self.members():
            self.kill()
        done = all([remove_cgroups(path, timeout) for path in self.paths])
        callback, self.on_removed = self.on_removed, None
        if callback is not None:
            callback(self)
        return done
