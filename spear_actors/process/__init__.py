"""Instance processes: resolve the binary, build the environment, spawn, watch and stop.

No actors here, only plain functions and classes (DESIGN.md sections 3 and 4), one job per
module:

* :mod:`.launch` — :func:`resolve_command` and :func:`build_env` prepare a launch;
  :func:`spawn` starts a child in its own session and process group, applies
  :class:`~spear_actors.config.ResourceLimits` and hands it to a :class:`ProcessWatcher`.
  The caller's thread runs all of it.
* :mod:`.watcher` — :class:`ProcessWatcher` is ONE background thread for all children: it
  drains their output into the log (:mod:`.output` splits it into lines), reaps each as soon
  as it exits and runs the callbacks (in that thread). :func:`default_watcher` is the shared
  one.
* :mod:`.guardian_link` and :mod:`.guardian` — no orphans, ever: each watcher owns a small
  guardian process (a standalone script) that SIGKILLs every child's session when this
  process dies, by any means. The watcher registers each spawn with it and replaces it if it
  dies; :meth:`ProcessWatcher.stop` closes and reaps it.
* :mod:`.handle` — :class:`ManagedProcess` is the handle any thread may use: signals,
  process-tree snapshots and a graceful or forced stop of the whole tree.
* :mod:`.cgroups` — :class:`Isolation`, one per system: detects cgroup v2 or v1, makes the
  spearlet's ``spear-PID-N`` cgroup (guarded by the guardian), removes what dead spearlets
  left, or falls back to rlimits with one warning; :mod:`.instance_cgroup` —
  :class:`InstanceCgroup`, one per instance generation: limits, usage, OOM kills, kill it
  whole, remove it; :mod:`.wrapper` — the exec wrapper that joins the cgroup (and, for
  ``network="none"``, a new network namespace) before the program runs.
* :mod:`.forking` — :func:`fork_instance` is :func:`spawn` for a handler (``entry``)
  instance: a :class:`Zygote` (``python -m spear_actors.zygote``, kept by a
  :class:`ZygotePool`, restarted if it dies) forks it; the child is then watched, guarded
  and stopped like a spawned one.
* :mod:`.reaping` — :func:`set_child_subreaper` / :func:`reap_adopted_orphans`: orphans of
  instances come to us and are reaped, instead of piling up as zombies under a PID 1 that
  does not reap.

Linux only (pidfd, /proc, prctl). The environment carries the instance secret: it is never
logged, nor stored on the handle.
"""

from __future__ import annotations

from .cgroups import Isolation
from .forking import ForkedChild, Zygote, ZygotePool, fork_instance
from .handle import ExitCallback, ManagedProcess, OutputCallback, Stream
from .instance_cgroup import InstanceCgroup
from .launch import ENV_ALLOWLIST, build_env, resolve_command, spawn
from .output import MAX_LINE
from .reaping import reap_adopted_orphans, set_child_subreaper
from .ring import DEFAULT_RING_LINES, OutputRings
from .watcher import ProcessWatcher, default_watcher

__all__ = [
    "DEFAULT_RING_LINES",
    "ENV_ALLOWLIST",
    "MAX_LINE",
    "ExitCallback",
    "ForkedChild",
    "InstanceCgroup",
    "Isolation",
    "ManagedProcess",
    "OutputCallback",
    "OutputRings",
    "ProcessWatcher",
    "Stream",
    "Zygote",
    "ZygotePool",
    "build_env",
    "default_watcher",
    "fork_instance",
    "reap_adopted_orphans",
    "resolve_command",
    "set_child_subreaper",
    "spawn",
]
