"""Orphans of instances: make this process their reaper, and reap those that come to us.

Without ``PR_SET_CHILD_SUBREAPER`` an instance's orphaned children go to PID 1, and a PID 1
that does not reap (some containers) keeps them as zombies forever. With it they come to us.

Threads: :func:`set_child_subreaper` is called once, early, by the main thread (``up`` does it);
:func:`reap_adopted_orphans` runs in the :class:`~spear_actors.process.ProcessWatcher` thread
(after an instance exits and every ``ORPHAN_SCAN_INTERVAL`` seconds) and is safe anywhere.
Linux only (prctl, /proc).
"""

from __future__ import annotations

import contextlib
import ctypes
import os

import psutil

__all__ = ["adopts_orphans", "reap_adopted_orphans", "set_child_subreaper"]


class _Subreaper:
    enabled = False


def set_child_subreaper(enable: bool = True) -> bool:
    """Make this process the reaper of orphaned descendants (Linux ``PR_SET_CHILD_SUBREAPER``).

    Without it, an instance's orphaned children go to PID 1, and a PID 1 that does not reap
    (some containers) keeps them as zombies. With it they come to us:
    :meth:`ManagedProcess.terminate_tree` reaps those it kills, and every
    :class:`ProcessWatcher` runs :func:`reap_adopted_orphans` after an instance exits and
    every :data:`ORPHAN_SCAN_INTERVAL` seconds. Returns False if unsupported.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        ok = int(libc.prctl(36, int(enable), 0, 0, 0)) == 0  # 36 = PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        return False
    if ok:
        _Subreaper.enabled = enable
    return ok


def adopts_orphans() -> bool:
    """True if orphans of our descendants come to us (subreaper, or we are PID 1)."""
    return _Subreaper.enabled or os.getpid() == 1


def reap_adopted_orphans() -> int:
    """Reap zombie children that were adopted (as subreaper or PID 1); return how many.

    Never reaps a child that code in this process started itself (its ``Popen`` would lose the
    exit status): such a child is in our session or leads its own, so only zombies whose
    session is neither are taken. An orphan that ran ``setsid`` is left alone here;
    :meth:`ManagedProcess.terminate_tree` reaps it if it is a known descendant.
    """
    try:  # one cheap syscall when there is no zombie child at all (the usual case)
        if os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
            return 0
    except ChildProcessError:
        return 0
    own_session, reaped = os.getsid(0), 0
    for child in psutil.Process().children():
        with contextlib.suppress(psutil.Error, OSError):
            if child.status() == psutil.STATUS_ZOMBIE \
                    and os.getsid(child.pid) not in (own_session, child.pid):
                os.waitpid(child.pid, os.WNOHANG)
                reaped += 1
    return reaped

