"""Tests for spear_actors.process.watcher: exit detection, output draining, callbacks, with
real child processes."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Any

import pytest
from helpers import wait_until

from spear_actors.process import MAX_LINE, ManagedProcess, ProcessWatcher, spawn

from .support import SLEEPER, Start, env_for, gone, py


@pytest.mark.parametrize("use_pidfd", [True, False])
def test_exit_code_detected_promptly(start: Start, use_pidfd: bool, tmp_path: Path) -> None:
    w = ProcessWatcher(use_pidfd=use_pidfd)
    try:
        proc, rec = start("import os, sys, time; print(time.monotonic(), os.getcwd(), "
                          "flush=True); sys.exit(3)", on=w, cwd=str(tmp_path))
        ctime = proc.create_time
        assert ctime is not None
        assert proc.wait(5) == 3
        assert proc.returncode == 3 and proc.exited.is_set() and rec.codes == [3]
        stamp, cwd = rec.out()[0].split(" ", 1)
        assert cwd == str(tmp_path)
        assert rec.exit_time is not None
        assert rec.exit_time - float(stamp) < 1.0
        assert gone(proc.pid, ctime)  # reaped: no zombie
    finally:
        assert w.stop(timeout=2.0)


def test_killed_by_signal_is_negative(start: Start) -> None:
    proc, rec = start(SLEEPER)
    wait_until(rec.saw("ready"), 5)
    ctime = proc.create_time
    assert ctime is not None
    assert proc.send_signal(signal.SIGKILL)
    assert proc.wait(5) == -signal.SIGKILL
    assert rec.codes == [-9]
    assert gone(proc.pid, ctime)
    assert not proc.send_signal(signal.SIGTERM)  # reaped: nothing to signal


def test_many_children_one_thread(start: Start, watcher: ProcessWatcher) -> None:
    threads = set(threading.enumerate())
    started = [start(f"import sys; print({i}); sys.exit({i})", iid=f"i-{i}")
               for i in range(8)]
    for i, (proc, rec) in enumerate(started):
        assert proc.wait(5) == i
        assert rec.out() == [str(i)] and {iid for iid, _, _ in rec.lines} == {f"i-{i}"}
    assert set(threading.enumerate()) - threads == set()  # no thread per process


def test_ten_megabytes_are_drained(start: Start) -> None:
    code = ("import sys\n"
            "out = sys.stdout.buffer\n"
            "line = b'x' * 1023 + b'\\n'\n"
            "for i in range(10240):\n"
            "    out.write(line)\n"
            "    if i % 1024 == 0: print('err', i, file=sys.stderr)\n"
            "out.flush()\n")
    proc, rec = start(code)
    assert proc.wait(30) == 0  # a writer blocked on a full pipe would never get here
    out = rec.out()
    assert len(out) == 10240 and all(len(line) == 1023 for line in out)
    assert len(rec.out("stderr")) == 10
    assert rec.lines_at_exit == len(rec.lines)  # on_exit runs after the last line


def test_long_lines_partial_lines_and_bad_utf8(start: Start) -> None:
    code = ("import sys\n"
            "o = sys.stdout.buffer\n"
            "o.write(b'a' * 200000 + b'\\nnext\\r\\n\\xff\\xfeok\\n'); o.write(b'tail')\n")
    proc, rec = start(code)
    assert proc.wait(5) == 0
    out = rec.out()
    assert out[0] == "a" * MAX_LINE + " [truncated]"
    assert out[1:] == ["next", "\ufffd\ufffdok", "tail"]


def test_output_is_logged_with_instance_and_stream(start: Start, records: list[Any]) -> None:
    proc, _ = start("import sys; print('to out'); print('to err', file=sys.stderr)",
                    iid="i-log")
    assert proc.wait(5) == 0
    got = {(r["message"], r["level"].name, r["extra"].get("stream"))
           for r in records if r["extra"].get("instance") == "i-log"}
    assert ("to out", "INFO", "stdout") in got
    assert ("to err", "WARNING", "stderr") in got


def test_watcher_survives_raising_callbacks(watcher: ProcessWatcher, start: Start,
                                            records: list[Any]) -> None:
    def boom(*_: object) -> None:
        raise RuntimeError("callback failure")

    bad = spawn(argv=py("print('a'); print('b')"), env=env_for(), cwd=None, limits=None,
                instance_id="i-bad", on_exit=boom, on_output=boom, watcher=watcher)
    assert bad.wait(5) == 0
    assert watcher.alive
    proc, rec = start("import sys; print('still here'); sys.exit(4)")
    assert proc.wait(5) == 4 and rec.out() == ["still here"] and rec.codes == [4]
    raised = [r for r in records if r["exception"] is not None]
    assert {r["message"] for r in raised} == {"on_output callback raised",
                                              "on_exit callback raised"}


def test_callback_may_stop_its_own_process(watcher: ProcessWatcher) -> None:
    holder: list[ManagedProcess] = []
    have = threading.Event()
    codes: list[int | None] = []

    def on_output(_iid: str, _stream: str, line: str) -> None:
        if line == "ready" and have.wait(5):
            codes.append(holder[0].terminate_tree(2))  # in the watcher thread

    proc = spawn(argv=py(SLEEPER), env=env_for(), cwd=None, limits=None, instance_id="i-1",
                 on_exit=codes.append, on_output=on_output, watcher=watcher)
    holder.append(proc)
    have.set()
    assert proc.wait(5) == -signal.SIGTERM
    assert codes == [-signal.SIGTERM, -signal.SIGTERM]
