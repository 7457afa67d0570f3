"""Launching an instance: resolve the binary, build its environment, spawn it, limit it.

:func:`resolve_command` and :func:`build_env` prepare a launch; :func:`spawn` starts the child
in its own session and process group, inside its cgroup (if it is given one) and network
namespace (``network="none"``) through the exec wrapper (:mod:`.wrapper`), applies what the
cgroup does not cover of :class:`~spear_actors.config.ResourceLimits` (rlimits, nice, affinity
without a cpuset) and hands it to a :class:`~spear_actors.process.ProcessWatcher`. All of it
runs in the
caller's thread (an instance actor's); the callbacks given to :func:`spawn` will run in the
watcher thread. The environment carries the instance secret: it is never logged, nor kept.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence

import psutil

from ..config import ResourceLimits
from ..errors import ConfigError, SpawnError
from .handle import ExitCallback, ManagedProcess, OutputCallback
from .instance_cgroup import InstanceCgroup
from .watcher import ProcessWatcher, default_watcher
from .wrapper import wrap

__all__ = ["ENV_ALLOWLIST", "build_env", "resolve_command", "spawn"]

ENV_ALLOWLIST = frozenset({"PATH", "HOME", "LANG", "TZ", "TMPDIR", "PYTHONPATH", "VIRTUAL_ENV"})
"""Variables passed through when ``inherit_env`` is false (plus every ``LC_*``)."""


def resolve_command(command: Sequence[str], working_dir: str | None) -> list[str]:
    """Return ``command`` with argv[0] made an absolute path to an executable file.

    A name without ``/`` is looked up on ``PATH``; a relative path is taken from
    ``working_dir`` (where the child will start) or the current directory. Symlinks are kept
    (a venv's ``python`` must stay the symlink). Raises :class:`SpawnError` at once if the
    binary is missing, a directory or not executable.
    """
    if isinstance(command, str) or not command or not command[0]:
        raise SpawnError(f"command must be a non-empty argv list, got {command!r}")
    prog = command[0]
    if "/" in prog:
        path = os.path.abspath(os.path.join(working_dir or os.getcwd(), prog))
    else:
        found = shutil.which(prog)
        if found is None:  # which() only returns executables: find out why for the message
            dirs = os.environ.get("PATH", os.defpath).split(os.pathsep)
            hits = [os.path.join(d or ".", prog) for d in dirs]
            found = next((h for h in hits if os.path.exists(h)), None)
            if found is None:
                raise SpawnError(f"binary not found: {prog} (not on PATH)")
        path = os.path.abspath(found)
    if not os.path.exists(path):
        raise SpawnError(f"binary not found: {path}")
    if os.path.isdir(path):
        raise SpawnError(f"is a directory: {path}")
    if not os.access(path, os.X_OK):
        raise SpawnError(f"not executable: {path}")
    return [path, *command[1:]]


def build_env(*, instance_id: str, secret: str, port: int | None, endpoint: str,
              transport: str, extra: Mapping[str, str], inherit_env: bool) -> dict[str, str]:
    """The environment of one instance process.

    Base: all of ``os.environ`` if ``inherit_env``, else only :data:`ENV_ALLOWLIST` and
    ``LC_*``. Then ``extra`` (the task's env), ``PYTHONUNBUFFERED=1`` unless already set, and
    last the ``SPEAR_*`` variables, which override anything else. ``port`` is ``None`` for an
    ``ipc`` listener: ``SPEAR_COMMUNICATION_PORT`` is then *absent* (not ``""``, which a client
    would fail to parse as a number) and clients must use ``SPEAR_COMMUNICATION_ENDPOINT``.
    """
    if transport not in ("tcp", "ipc"):
        raise ConfigError(f"transport must be 'tcp' or 'ipc', got {transport!r}")
    if port is None and transport == "tcp":
        raise ConfigError("a tcp listener needs a port")
    if inherit_env:
        env = dict(os.environ)
    else:
        env = {k: v for k, v in os.environ.items() if k in ENV_ALLOWLIST or k.startswith("LC_")}
    env.update(extra)
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.pop("SPEAR_COMMUNICATION_PORT", None)
    if port is not None:
        env["SPEAR_COMMUNICATION_PORT"] = str(port)
    env["SPEAR_INSTANCE_ID"] = instance_id
    env["SPEAR_SECRET"] = secret
    env["SPEAR_COMMUNICATION_TYPE"] = transport
    env.pop("SPEAR_COMMUNICATION_PATH", None)
    if transport == "ipc" and endpoint.startswith("ipc://"):
        env["SPEAR_COMMUNICATION_PATH"] = endpoint[len("ipc://"):]
    env["SPEAR_COMMUNICATION_ENDPOINT"] = endpoint
    return env



def spawn(*, argv: Sequence[str], env: Mapping[str, str], cwd: str | None,
          limits: ResourceLimits | None, instance_id: str, on_exit: ExitCallback | None,
          on_output: OutputCallback | None = None,
          watcher: ProcessWatcher | None = None,
          cgroup: InstanceCgroup | None = None,
          pass_fds: Sequence[int] = ()) -> ManagedProcess:
    """Start ``argv`` in its own session and process group, apply ``limits``, watch it.

    Runs in the caller's thread; ``on_exit`` and ``on_output`` will run in the watcher thread
    (default: :func:`default_watcher`). stdin is /dev/null; stdout and stderr are drained
    into the log. ``cwd`` must exist (the caller creates it). No ``preexec_fn`` (unsafe with
    threads): with a ``cgroup`` (made by :meth:`~.cgroups.Isolation.create`, limits already
    written) the exec wrapper joins it before the program runs, and memory, cpus,
    max_processes and the cpuset are the kernel's. Without one (the rlimit fallback)
    ``memory_bytes`` becomes RLIMIT_AS right after exec with psutil, leaving a first moment
    unlimited, and ``cpus``/``max_processes`` are not enforced. ``limits.network == "none"``
    runs it in a fresh network namespace. The handle's :attr:`~ManagedProcess.cgroup` is
    ``cgroup``: stopping it kills the whole cgroup. The child is registered with the watcher's
    guardian (started before the fork if none runs), so it dies with this process, however
    this process dies. ``pass_fds`` are inherited by the child (the zygote's control socket).
    Raises :class:`SpawnError` if the process cannot be started or a limit
    cannot be applied (the child is then killed and reaped).
    """
    if not argv:
        raise SpawnError("empty command")
    if cwd is not None and not os.path.isdir(cwd):
        raise SpawnError(f"working directory does not exist: {cwd}")
    watcher = watcher if watcher is not None else default_watcher()
    command = wrap(argv, join=cgroup.procs_files if cgroup is not None else (),
                   network=limits.network if limits is not None else "host")
    watcher.prepare_spawn()
    try:
        popen = subprocess.Popen(command, env=dict(env), cwd=cwd, stdin=subprocess.DEVNULL,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 close_fds=True, pass_fds=tuple(pass_fds),
                                 start_new_session=True)
    except (OSError, ValueError) as exc:  # ENOENT, EACCES, ENOEXEC, bad env ...
        raise SpawnError(f"cannot start {argv[0]} for instance {instance_id}: {exc}") from exc
    pidfd = None
    if watcher.uses_pidfd:
        with contextlib.suppress(OSError):  # ENOSYS, EPERM: the watcher polls instead
            pidfd = os.pidfd_open(popen.pid)
    proc = ManagedProcess(popen, instance_id=instance_id, argv=argv, pidfd=pidfd,
                          on_exit=on_exit, on_output=on_output, cgroup=cgroup)
    try:
        if limits is not None:
            _apply_limits(proc, limits, cgroup)
        watcher.register(proc)
    except (psutil.Error, OSError, ValueError, RuntimeError) as exc:
        proc.kill_tree()
        proc._close_fds()
        raise SpawnError(f"cannot start instance {instance_id}: {exc}") from exc
    proc._log.debug("spawned pid {}: {}", proc.pid, argv[0])
    return proc


def _apply_limits(proc: ManagedProcess, limits: ResourceLimits,
                  cgroup: InstanceCgroup | None) -> None:
    """What the cgroup does not do (all of it without one), with psutil, after exec."""
    p = proc._ps
    if p is None:
        return
    try:
        if limits.memory_bytes is not None and cgroup is None:
            _set_rlimit(p, psutil.RLIMIT_AS, limits.memory_bytes)
        if limits.max_open_files is not None:
            _set_rlimit(p, psutil.RLIMIT_NOFILE, limits.max_open_files)
        if limits.cpu_affinity is not None and (cgroup is None or not cgroup.handles_affinity):
            p.cpu_affinity(list(limits.cpu_affinity))
        if limits.nice is not None:
            p.nice(limits.nice)
    except psutil.NoSuchProcess:  # already exited (or a zombie): the watcher reports it
        return


def _set_rlimit(p: psutil.Process, resource: int, value: int) -> None:
    """Set soft and hard limit (so the child cannot raise it), never above our hard limit."""
    _soft, hard = p.rlimit(resource)
    if hard != psutil.RLIM_INFINITY:
        value = min(value, hard)
    p.rlimit(resource, (value, value))
