"""The run directory (0700, ours) and its run file (JSON, 0600): where a local client finds
the control endpoint of the ``up`` serving that directory, and the token it needs. Any thread;
only ``up``'s main thread writes the run file (:class:`~.server.ControlServer`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import SpearError

if TYPE_CHECKING:
    pass


__all__ = [
    "RUN_FILE",
    "NotRunning",
    "RunInfo",
    "claim_run_dir",
    "prepare_run_dir",
    "read_run_file",
    "resolve_run_dir",
]

RUN_FILE = "control.json"


class NotRunning(SpearError):
    """No spear-actors system serves this run directory."""


def resolve_run_dir(run_dir: str | os.PathLike[str] | None = None) -> Path:
    """``run_dir``, else ``$SPEAR_RUN_DIR``, else ``$XDG_RUNTIME_DIR/spear-actors``, else
    ``/tmp/spear-actors-$UID``."""
    if run_dir is not None:
        return Path(run_dir)
    if os.environ.get("SPEAR_RUN_DIR"):
        return Path(os.environ["SPEAR_RUN_DIR"])
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and os.path.isdir(xdg):
        return Path(xdg) / "spear-actors"
    return Path(f"/tmp/spear-actors-{os.getuid()}")


def prepare_run_dir(run_dir: Path) -> Path:
    """Create ``run_dir`` (0700) or check that an existing one is ours and private."""
    try:
        run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = os.lstat(run_dir)
    except OSError as exc:
        raise SpearError(f"cannot create run directory {run_dir}: {exc}") from exc
    if not stat.S_ISDIR(st.st_mode):
        raise SpearError(f"run directory {run_dir} is not a directory (or is a symlink)")
    if st.st_uid != os.getuid():
        raise SpearError(f"run directory {run_dir} belongs to uid {st.st_uid}, not to us "
                         f"(uid {os.getuid()}); pass --run-dir or set SPEAR_RUN_DIR")
    if stat.S_IMODE(st.st_mode) != 0o700:
        os.chmod(run_dir, 0o700)
    return run_dir


def claim_run_dir(run_dir: Path) -> Path:
    """:func:`prepare_run_dir`, and refuse if another live system already serves it."""
    prepare_run_dir(run_dir)
    try:
        other = read_run_file(run_dir)
    except NotRunning:
        return run_dir  # none, or a stale one (replaced when we write ours)
    if other.pid != os.getpid():
        raise SpearError(f"another spear-actors (pid {other.pid}) is running with run "
                         f"directory {run_dir}; stop it, or pass --run-dir / set SPEAR_RUN_DIR")
    return run_dir


@dataclass(frozen=True)
class RunInfo:
    """What the run file holds. ``token`` is the credential: never print it."""

    endpoint: str
    token: str = dataclasses.field(repr=False)
    pid: int
    started_at: float
    listener: str = ""
    path: str = ""


def read_run_file(run_dir: Path) -> RunInfo:
    """The run file of the system serving ``run_dir``; NotRunning if there is none alive."""
    path = run_dir / RUN_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        info = RunInfo(endpoint=str(data["endpoint"]), token=str(data["token"]),
                       pid=int(data["pid"]), started_at=float(data["started_at"]),
                       listener=str(data.get("listener", "")), path=str(path))
    except FileNotFoundError:
        raise NotRunning(f"no spear-actors system is running (no run file {path}; start one "
                         "with `spear-actors up`, or pass the run directory it uses)") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise NotRunning(f"unreadable run file {path}: {exc}") from None
    if not _pid_alive(info.pid):
        raise NotRunning(f"no spear-actors system is running (stale run file {path}: "
                         f"pid {info.pid} is gone)")
    return info


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _write_run_file(run_dir: Path, payload: Mapping[str, Any]) -> Path:
    path = run_dir / RUN_FILE
    tmp = run_dir / f".{RUN_FILE}.{os.getpid()}"
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, json.dumps(dict(payload), indent=1).encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return path
