"""Tests for spear_actors.process.reaping: adopted orphans are reaped, our own children never
stolen."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import psutil
from helpers import wait_until

from spear_actors.process import ProcessWatcher, reap_adopted_orphans

from .support import Start, gone, py

ORPHAN = ("import subprocess, sys\n"
          "g = subprocess.Popen([sys.executable, '-S', '-c', 'import os, sys, time\\n"
          "print(\"orphan\", os.getpid(), flush=True)\\n"
          "while not os.path.exists(sys.argv[1]): time.sleep(0.01)\\n', sys.argv[1]],\n"
          "                     stdout=subprocess.PIPE)\n"
          "print(g.stdout.readline().decode().strip(), flush=True)\n")


def test_orphans_exiting_on_their_own_are_reaped(start: Start, subreaper: None,
                                                 tmp_path: Path) -> None:
    w = ProcessWatcher(orphan_scan_interval=0.05)
    try:
        flag = tmp_path / "go"
        proc, rec = start(ORPHAN, on=w, args=(str(flag),))
        assert proc.wait(5) == 0  # the parent is gone, the grandchild lives on
        orphan = psutil.Process(int(rec.out()[0].split()[1]))
        ctime = orphan.create_time()
        wait_until(lambda: orphan.ppid() == os.getpid(), 5)  # adopted by the test process
        flag.touch()  # now it exits by itself, and nobody but us can reap it
        wait_until(lambda: gone(orphan.pid, ctime), 5, message="the orphan to be reaped")
    finally:
        assert w.stop(timeout=2.0)


def test_reap_adopted_orphans_leaves_our_own_children_alone(subreaper: None) -> None:
    own = [subprocess.Popen(py(f"import sys; sys.exit({5 + i})"), start_new_session=bool(i))
           for i in range(2)]
    wait_until(lambda: all(psutil.Process(p.pid).status() == psutil.STATUS_ZOMBIE
                           for p in own), 5)
    assert reap_adopted_orphans() == 0
    assert [p.wait(5) for p in own] == [5, 6]  # the exit statuses were not stolen
