"""Tests for spear_actors.process.handle: stopping a process tree gracefully or by force,
with real child processes and real signals."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import psutil
from helpers import wait_until

from .support import SLEEPER, Recorder, Start, gone


def test_terminate_tree_graceful(start: Start) -> None:
    proc, rec = start(SLEEPER)
    wait_until(rec.saw("ready"), 5)
    t0 = time.monotonic()
    assert proc.terminate_tree(5) == -signal.SIGTERM
    assert time.monotonic() - t0 < 2.5  # did not wait for the timeout
    # idempotent, also after the exit
    assert proc.terminate_tree(5) == -signal.SIGTERM
    assert proc.kill_tree() == -signal.SIGTERM
    assert not proc.signal_group(signal.SIGTERM)
    assert rec.codes == [-signal.SIGTERM]


def test_terminate_tree_escalates_to_sigkill(start: Start) -> None:
    proc, rec = start("import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
                      "print('ready', flush=True)\ntime.sleep(30)\n")
    wait_until(rec.saw("ready"), 5)
    ctime = proc.create_time
    assert ctime is not None
    t0 = time.monotonic()
    assert proc.terminate_tree(0.3) == -signal.SIGKILL
    assert 0.3 <= time.monotonic() - t0 < 3.0
    assert gone(proc.pid, ctime)


def test_terminate_tree_continues_a_stopped_process(start: Start) -> None:
    proc, rec = start("import os, signal\nprint('ready', flush=True)\n"
                      "os.kill(os.getpid(), signal.SIGSTOP)\n")
    wait_until(rec.saw("ready"), 5)
    wait_until(lambda: psutil.Process(proc.pid).status() == psutil.STATUS_STOPPED, 5)
    t0 = time.monotonic()
    assert proc.terminate_tree(5) == -signal.SIGTERM  # SIGCONT lets SIGTERM act at once
    assert time.monotonic() - t0 < 2.5


GRANDCHILD = ("import os, subprocess, sys, time\n"
              "subprocess.Popen([sys.executable, '-S', '-c', 'import os, time; os.setsid(); "
              "print(\"grandchild\", os.getpid(), flush=True); time.sleep(30)'])\n"
              "while not os.path.exists(sys.argv[1]): time.sleep(0.01)\n"
              "{after}\n")


def _grandchild_pid(rec: Recorder) -> psutil.Process:
    line = wait_until(lambda: [x for x in rec.out() if x.startswith("grandchild")], 5)[0]
    return psutil.Process(int(line.split()[1]))


def test_terminate_tree_kills_setsid_grandchild(start: Start, subreaper: None,
                                                tmp_path: Path) -> None:
    proc, rec = start(GRANDCHILD.format(after=""), args=(str(tmp_path / "never"),))
    gc = _grandchild_pid(rec)
    assert os.getsid(gc.pid) == gc.pid != proc.pid  # left our session and group
    ctime = gc.create_time()
    assert proc.terminate_tree(2) == -signal.SIGTERM
    assert gone(gc.pid, ctime)


def test_remembered_grandchild_killed_after_parent_exits(start: Start, subreaper: None,
                                                          tmp_path: Path) -> None:
    flag = tmp_path / "go"
    proc, rec = start(GRANDCHILD.format(after="sys.exit(0)"), args=(str(flag),))
    gc = _grandchild_pid(rec)
    ctime = gc.create_time()
    assert gc.pid in {p.pid for p in proc.descendants()}  # remembered from now on
    flag.touch()
    assert proc.wait(5) == 0
    wait_until(lambda: gc.ppid() == os.getpid(), 5)  # orphaned, adopted by the test process
    assert gc.is_running()
    assert proc.terminate_tree(2) == 0
    assert gone(gc.pid, ctime)
