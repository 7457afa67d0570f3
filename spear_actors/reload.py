"""Apply a reread ``spear.toml`` to a running system: ``reload`` and SIGHUP (DESIGN.md §8).

:class:`Reloader` holds the file's path and the configuration now applied. :meth:`reload`
reads and checks the file first (a :class:`~spear_actors.errors.ConfigError` naming the key
changes nothing), then, task by task: a new task starts its instances; a removed task's
instances are stopped and no longer listed; a changed ``instances`` count scales the task (the
instances that stay keep their pids); changed settings (command, env, restart policy,
resources, ...) restart the task's instances one at a time, each waited READY before the next.
Settings of the system itself (``[system]``, ``[connection]``, ``[monitoring]``,
``[control]``) cannot change under a running listener: they are reported as needing a restart
of ``up``.

Threads: :meth:`reload` runs in whichever thread asks (``up``'s waiting loop on SIGHUP, a
control server worker for ``spear-actors reload``); one lock makes reloads take turns.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import SpearError

if TYPE_CHECKING:
    from .system import SpearSystem
    from .tomlconfig import SpearFile, TaskSpec

__all__ = ["ReloadReport", "Reloader"]


@dataclass
class ReloadReport:
    """What a reload did (every list holds task names or instance ids)."""

    path: str
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    scaled: dict[str, list[int]] = field(default_factory=dict)
    """task -> [old count, new count]"""
    restarted: list[str] = field(default_factory=list)
    """instances restarted with their task's new settings"""
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "added": self.added, "removed": self.removed,
                "scaled": self.scaled, "restarted": self.restarted, "notes": self.notes}

    def summary(self) -> str:
        parts = [f"reloaded {self.path}"]
        if self.added:
            parts.append(f"added {', '.join(self.added)}")
        if self.removed:
            parts.append(f"removed {', '.join(self.removed)}")
        for task, (old, new) in self.scaled.items():
            parts.append(f"scaled {task} {old} -> {new}")
        if self.restarted:
            parts.append(f"restarted {', '.join(self.restarted)}")
        if len(parts) == 1:
            parts.append("no change")
        return "; ".join(parts + self.notes)


class Reloader:
    """Rereads ``path`` and applies it to ``system``; see the module docstring."""

    def __init__(self, system: SpearSystem, path: str | None, current: SpearFile) -> None:
        self.system = system
        self.path = os.path.abspath(path) if path is not None else None
        self.current = current
        self._lock = threading.Lock()

    def reload(self, timeout: float = 60.0) -> ReloadReport:
        """Reread and apply; ConfigError (nothing changed) if the file is invalid."""
        from . import tomlconfig

        with self._lock:
            if self.path is None:
                raise SpearError("this system was started without a configuration file: "
                                 "nothing to reload")
            new = tomlconfig.load(self.path)  # ConfigError: nothing changed
            previous = self.current
            report = ReloadReport(self.path)
            old_tasks = {t.name: t for t in previous.tasks}
            new_tasks = {t.name: t for t in new.tasks}
            for name in old_tasks:
                if name not in new_tasks:
                    self.system.remove_task(name, timeout=timeout)
                    report.removed.append(name)
            try:
                for name, task in new_tasks.items():
                    old = old_tasks.get(name)
                    if old is None:
                        self._add(task)
                        report.added.append(name)
                    else:
                        self._change(old, task, report, timeout)
            finally:
                # what is running now is the new file, as far as it got
                self.current = new
            if (new.system, new.control) != (previous.system, previous.control):
                report.notes.append("system settings changed: restart `up` to apply them")
            return report

    def _add(self, task: TaskSpec) -> None:
        self.system.scale(task.name, task.instances, config=task.config, limits=task.limits)

    def _change(self, old: TaskSpec, new: TaskSpec, report: ReloadReport,
                timeout: float) -> None:
        system = self.system
        changed = (old.config, old.limits) != (new.config, new.limits)
        keep = [i.id for i in system.instances(new.name)]
        if new.instances != len(keep) or changed:
            result = system.scale(new.name, new.instances, config=new.config,
                                  limits=new.limits, timeout=timeout)
            if new.instances != old.instances or result["created"] or result["removed"]:
                report.scaled[new.name] = [len(keep), new.instances]
            keep = [i for i in keep if i not in result["removed"]]
        if not changed:
            return
        for instance_id in keep:  # one at a time: the task keeps serving meanwhile
            system.stop_instance(instance_id, timeout=new.config.stop_timeout + 5.0)
            system.start_instance(instance_id, config=new.config, limits=new.limits)
            system.wait_ready(instance_id, timeout=new.config.startup_timeout + 5.0)
            report.restarted.append(instance_id)
