"""Kernel isolation for instances (DESIGN.md section 9): which cgroups, and the spearlet's own.

:func:`detect` reads ``/proc/self/mountinfo`` and ``/proc/self/cgroup`` and picks cgroup v2
(a cgroup2 mount where memory, cpu and pids are available to the spearlet's cgroup) or v1
(memory, cpu, pids and freezer hierarchies mounted), else says why neither can be used.

:class:`Isolation` is the spearlet's side of it, one per :class:`~spear_actors.SpearSystem`:
:meth:`Isolation.start` detects, removes what a crashed spearlet left (``spear-PID*``
directories whose PID is dead), and makes ``spear-PID-N`` under the spearlet's own cgroup in
each hierarchy, registered with the process guardian (which kills and removes it should this
process die). Where cgroups cannot be used (not root, read-only, missing controllers), it logs
ONE warning and :attr:`Isolation.mode` is ``"rlimit"``: :func:`~spear_actors.process.spawn`
then applies rlimits as before. :meth:`Isolation.create` makes one
:class:`~.instance_cgroup.InstanceCgroup` per instance generation below that root.

CPU fairness: a CFS group weighs as much as one process against its siblings, so only
instances with a ``cpus`` quota get a CPU group (v1), and the spearlet's CPU group is given
the weight of as many processes as it holds such groups (v2: every instance has one).

Threads: :meth:`Isolation.start` and :meth:`Isolation.close` run in the thread that starts and
shuts down the system; :meth:`Isolation.create` and the removal of instance cgroups in
instance actors' threads (directories of distinct names; one lock for the CPU weight). Linux
only.
"""

from __future__ import annotations

import errno
import itertools
import os
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import psutil

from .._log import logger
from ..config import ResourceLimits
from .guardian import kill_cgroups, remove_cgroups
from .instance_cgroup import InstanceCgroup

if TYPE_CHECKING:
    from .watcher import ProcessWatcher

__all__ = ["PREFIX", "Isolation", "Layout", "detect", "remove_stale"]

PREFIX = "spear-"
"""Every directory the spearlet makes in a hierarchy starts with this, then its pid."""
V1_REQUIRED = ("memory", "cpu", "pids", "freezer")
V1_OPTIONAL = ("cpuacct", "cpuset")
V2_REQUIRED = ("memory", "cpu", "pids")
V2_OPTIONAL = ("cpuset",)
Mode = Literal["cgroup v2", "cgroup v1", "rlimit"]
_OWNED = re.compile(r"^spear-(\d+)(?:-\d+)?$")
_roots = itertools.count(1)  # several systems in one process get distinct roots


@dataclass(frozen=True)
class Layout:
    """Where the spearlet's own cgroups are: controller -> directory (v2: one directory)."""

    version: int
    bases: Mapping[str, str]

    @property
    def mode(self) -> Mode:
        return "cgroup v2" if self.version == 2 else "cgroup v1"


def _unescape(path: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), path)


def _own_dir(mountpoint: str, mount_root: str, path: str) -> str:
    if mount_root != "/" and (path == mount_root or path.startswith(mount_root + "/")):
        path = path[len(mount_root):] or "/"
    return os.path.normpath(mountpoint + "/" + path.lstrip("/"))


def detect(mountinfo: str = "/proc/self/mountinfo",
           own_cgroup: str = "/proc/self/cgroup") -> Layout | str:
    """The usable cgroup layout, preferring v2; or a sentence saying why none is usable."""
    try:
        with open(mountinfo) as f:
            mounts = f.read().splitlines()
        with open(own_cgroup) as f:
            own = f.read().splitlines()
    except OSError as exc:
        return f"cannot read the cgroup mounts: {exc}"
    v1: dict[str, tuple[str, str]] = {}  # controller -> (mountpoint, mount root)
    v2: tuple[str, str] | None = None
    for line in mounts:
        left, _, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if len(fields) < 5 or len(tail) < 3:
            continue
        where = (_unescape(fields[4]), _unescape(fields[3]))
        if tail[0] == "cgroup2":
            v2 = v2 or where
        elif tail[0] == "cgroup":
            for option in tail[2].split(","):
                v1.setdefault(option, where)
    paths: dict[str, str] = {}  # controller ("" for v2) -> path of our cgroup
    for line in own:
        parts = line.split(":", 2)
        if len(parts) == 3:
            for controller in parts[1].split(",") if parts[1] else [""]:
                paths[controller] = parts[2]
    reasons = []
    if v2 is not None and "" in paths:
        base = _own_dir(v2[0], v2[1], paths[""])
        try:
            with open(os.path.join(base, "cgroup.controllers")) as f:
                available = set(f.read().split())
        except OSError:
            available = set()
        missing = [c for c in V2_REQUIRED if c not in available]
        if not missing:
            wanted = [*V2_REQUIRED, *(c for c in V2_OPTIONAL if c in available)]
            return Layout(2, dict.fromkeys(wanted, base))
        reasons.append(f"cgroup2 at {v2[0]} lacks {', '.join(missing)}")
    missing = [c for c in V1_REQUIRED if c not in v1 or c not in paths]
    if not missing:
        wanted = [*V1_REQUIRED, *(c for c in V1_OPTIONAL if c in v1 and c in paths)]
        return Layout(1, {c: _own_dir(v1[c][0], v1[c][1], paths[c]) for c in wanted})
    reasons.append(f"cgroup v1 lacks {', '.join(missing)}")
    return "; ".join(reasons)


def _pid_alive(pid: int) -> bool:
    return psutil.pid_exists(pid) and pid != 0


def remove_stale(layout: Layout) -> list[str]:
    """Kill the processes in, and remove, every ``spear-PID*`` directory in the spearlet's
    own cgroups whose PID is dead (a spearlet that crashed); returns the removed paths."""
    removed = []
    for base in dict.fromkeys(layout.bases.values()):
        try:
            names = os.listdir(base)
        except OSError:
            continue
        for name in names:
            match = _OWNED.match(name)
            path = os.path.join(base, name)
            if match is None or _pid_alive(int(match.group(1))) or not os.path.isdir(path):
                continue
            kill_cgroups({path: layout.version})
            if remove_cgroups(path, 1.0):
                removed.append(path)
            else:
                logger.warning("cannot remove the cgroup {} left by a dead spearlet", path)
    return removed


class Isolation:
    """The spearlet's cgroups, or the rlimit fallback; see the module docstring."""

    def __init__(self, mode: Mode, layout: Layout | None = None,
                 roots: Mapping[str, str] | None = None, reason: str | None = None,
                 watcher: ProcessWatcher | None = None) -> None:
        self.mode: Mode = mode
        self.layout = layout
        self.roots = dict(roots or {})
        """Controller -> the spearlet's ``spear-PID-N`` directory in that hierarchy."""
        self.reason = reason
        """Why cgroups are not used (``mode == "rlimit"``), else None."""
        self._watcher = watcher
        self._closed = False
        self._lock = threading.Lock()  # guards _weighed (instance actors' threads)
        self._weighed = 0  # live instance cgroups that have a CPU group of their own

    def __repr__(self) -> str:
        return f"<Isolation {self.mode} {self.paths}>"

    @classmethod
    def rlimits(cls, reason: str) -> Isolation:
        """No cgroups: limits are rlimits (no warning here; :meth:`start` logs one)."""
        return cls("rlimit", reason=reason)

    @classmethod
    def start(cls, *, watcher: ProcessWatcher | None = None, enabled: bool = True,
              layout: Layout | str | None = None) -> Isolation:
        """Detect (unless ``layout`` is given), clean up after dead spearlets, make this
        spearlet's root cgroups and have ``watcher``'s guardian guard them. Never raises:
        where cgroups cannot be used, logs one warning and returns the rlimit fallback."""
        if not enabled:
            return cls.rlimits("cgroups disabled by the configuration")
        found = detect() if layout is None else layout
        if isinstance(found, str):
            return cls._fallback(found)
        if os.geteuid() != 0 and not all(os.access(b, os.W_OK) for b in found.bases.values()):
            return cls._fallback("not root and the cgroups are not delegated to this user")
        removed = remove_stale(found)
        if removed:
            logger.info("removed {} cgroup(s) left by a dead spearlet: {}", len(removed),
                        removed)
        name = f"{PREFIX}{os.getpid()}-{next(_roots)}"
        roots = {c: os.path.join(base, name) for c, base in found.bases.items()}
        made: list[str] = []
        try:
            for path in dict.fromkeys(roots.values()):
                os.mkdir(path, 0o755)
                made.append(path)
            if found.version == 2:
                _delegate_v2(found, roots)
            elif "cpuset" in roots:
                _inherit_cpuset(roots["cpuset"])
        except OSError as exc:
            for path in reversed(made):
                remove_cgroups(path, 0.5)
            return cls._fallback(f"cannot set up {found.mode} under "
                                 f"{os.path.dirname(next(iter(roots.values())))}: {exc}")
        isolation = cls(found.mode, found, roots, watcher=watcher)
        if watcher is not None:
            for path in isolation.paths:
                watcher.guard_cgroup(path, found.version)
        logger.info("isolation: {} under {}", found.mode, isolation.paths)
        return isolation

    @classmethod
    def _fallback(cls, reason: str) -> Isolation:
        logger.warning("instances run WITHOUT cgroups ({}): memory_bytes is an address-space "
                       "rlimit, cpus and max_processes are not enforced, a stop may miss "
                       "processes that left the session", reason)
        return cls.rlimits(reason)

    @property
    def uses_cgroups(self) -> bool:
        return self.layout is not None

    @property
    def paths(self) -> list[str]:
        """The spearlet's distinct root directories (one per v1 hierarchy)."""
        return list(dict.fromkeys(self.roots.values()))

    def create(self, name: str, limits: ResourceLimits) -> InstanceCgroup | None:
        """The cgroup for one instance generation (``name`` like ``echo-1-3``) with ``limits``
        written; None in rlimit mode. Raises OSError if it cannot be made. Any thread."""
        if self.layout is None or self._closed:
            return None
        group = InstanceCgroup.create(self.layout.version, self.roots, name, limits)
        if "cpu" in group.dirs:
            group.on_removed = self._unweigh
            self._reweigh(+1)
        return group

    def _unweigh(self, _group: InstanceCgroup) -> None:
        self._reweigh(-1)

    def _reweigh(self, change: int) -> None:
        """Give the spearlet's CPU group the weight of as many processes as it holds CPU
        groups of instances (each weighs one process's worth): under it, instances compete
        for the CPU as they would as plain processes, not as one process all together."""
        assert self.layout is not None
        with self._lock:
            self._weighed = max(0, self._weighed + change)
            n = max(1, self._weighed)
            if self.layout.version == 2:
                name, value = "cpu.weight", min(10_000, 100 * n)
            else:
                name, value = "cpu.shares", min(262_144, 1024 * n)
            try:
                with open(os.path.join(self.roots["cpu"], name), "w") as f:
                    f.write(str(value))
            except OSError as exc:  # a missing file (old kernel): only fairness suffers
                logger.debug("cannot set {} of the spearlet's cgroup: {}", name, exc)

    def close(self, *, tell_guardian: bool = True) -> bool:
        """Kill whatever is left in the spearlet's cgroups and remove them; True if all went.
        Idempotent; call after the instances were stopped. ``tell_guardian=False`` takes no
        lock (for a signal handler: the guardian is about to be killed anyway)."""
        if self.layout is None or (self._closed and tell_guardian):
            self._closed = True
            return True  # (a forced close runs again: it may interrupt a graceful one)
        self._closed = True
        kill_cgroups(dict.fromkeys(self.paths, self.layout.version))
        ok = True
        for path in self.paths:
            if remove_cgroups(path, 2.0):
                if self._watcher is not None and tell_guardian:
                    self._watcher.unguard_cgroup(path)
            else:
                ok = False
                logger.warning("cannot remove the cgroup {}", path)
        return ok


def _delegate_v2(layout: Layout, roots: Mapping[str, str]) -> None:
    """Enable the controllers for our root's children (and in the parent, for our root)."""
    controllers = " ".join(f"+{c}" for c in layout.bases)
    base = next(iter(layout.bases.values()))
    root = next(iter(roots.values()))
    for path in (base, root):
        try:
            with open(os.path.join(path, "cgroup.subtree_control"), "w") as f:
                f.write(controllers)
        except OSError as exc:
            if exc.errno == errno.EBUSY:  # cgroup v2: no processes in an inner cgroup
                raise OSError(exc.errno, f"{path} holds processes (this spearlet among "
                              "them) and cgroup v2 hands controllers only to the children of "
                              "a cgroup without processes (moving the spearlet into a leaf "
                              "of its own is not implemented)") from None
            raise


def _inherit_cpuset(root: str) -> None:
    """A new v1 cpuset is empty (takes no process): copy cpus and mems from the parent."""
    parent = os.path.dirname(root)
    for name in ("cpuset.cpus", "cpuset.mems"):
        with open(os.path.join(parent, name)) as f:
            value = f.read().strip()
        with open(os.path.join(root, name), "w") as f:
            f.write(value)
