"""``up --repl``: an interactive Python console with the running ``system`` bound.

Runs in the main thread (``code.interact`` reads stdin there); SIGTERM, or the warden thread
of :mod:`.up` when the system fails, leaves it through
:class:`spear_actors.cli.signals.Terminate`, raised by the signal handler. Losing its terminal
ends it as Ctrl-D would.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .. import __version__
from .signals import Terminate

if TYPE_CHECKING:
    from ..system import SpearSystem

__all__ = ["run_repl"]


def run_repl(system: SpearSystem, run_file: str, control_endpoint: str) -> None:
    """``code.interact`` with ``system`` bound; returns when the user leaves (or SIGTERM)."""
    import code

    from .. import config, records

    namespace: dict[str, Any] = {
        "system": system, "tree": system.tree, "instances": system.instances,
        "connections": system.connections, "metrics": system.metrics,
        "events": system.events, "execute": system.execute, "submit": system.submit,
        "InstanceConfig": config.InstanceConfig, "ResourceLimits": config.ResourceLimits,
        "RestartPolicy": config.RestartPolicy, "InstanceState": records.InstanceState}
    try:
        import readline
        import rlcompleter

        readline.set_completer(rlcompleter.Completer(namespace).complete)
        readline.parse_and_bind("tab: complete")
    except ImportError:
        pass
    banner = (f"spear-actors {__version__} on {system.endpoint} (control {control_endpoint}, "
              f"run file {run_file})\n"
              "  system.tree()  system.instances()  system.metrics()  system.events(20)\n"
              "  system.execute(task, b'data')  system.restart_instance(id)\n"
              "  also bound: tree, instances, connections, metrics, events, execute, submit\n"
              "Leave with Ctrl-D or exit(): every instance is then stopped.")
    try:
        code.interact(banner=banner, local=namespace, exitmsg="")
    except (SystemExit, Terminate):
        pass
    except OSError:  # its terminal hung up (EIO) or its pipe closed: as if left with Ctrl-D
        pass
