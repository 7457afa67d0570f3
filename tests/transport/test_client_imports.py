"""What an instance pays at start-up: ``import spear_actors.client`` (and the echo example)
must load only the standard library, zmq, msgpack and spear_actors (DESIGN.md section 1)."""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ALLOWED_PACKAGES = {"zmq", "msgpack", "spear_actors"}
FORBIDDEN = {"pykka", "psutil", "loguru"}

ROOT = str(Path(__file__).resolve().parents[2])
"""This tree: ``-I`` drops PYTHONPATH, and the venv's editable install may point elsewhere."""
PROBE = """
import json, sys
sys.path.insert(0, {root!r})
before = set(sys.modules)
import {module}
print(json.dumps({{name: getattr(sys.modules[name], "__file__", None)
                  for name in set(sys.modules) - before}}))
"""


def loaded_by(module: str) -> dict[str, str | None]:
    """Modules (name -> file) that importing ``module`` loads in a fresh interpreter."""
    result = subprocess.run([sys.executable, "-I", "-c", PROBE.format(module=module, root=ROOT)],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    loaded: dict[str, str | None] = json.loads(result.stdout)
    return loaded


def is_stdlib(path: str) -> bool:
    paths = sysconfig.get_paths()
    return any(path.startswith(paths[key] + "/") for key in ("stdlib", "platstdlib"))


@pytest.mark.parametrize("module", ["spear_actors.client", "spear_actors.examples.echo"])
def test_instance_imports_stay_lean(module: str) -> None:
    loaded = loaded_by(module)
    assert module in loaded
    assert loaded["spear_actors"] == str(Path(ROOT, "spear_actors", "__init__.py"))
    assert "logging" not in loaded  # the reconnect warning imports it when first needed
    tops = {name.split(".")[0] for name in loaded}
    assert not tops & FORBIDDEN, sorted(tops & FORBIDDEN)
    # modules without a file are built in or made by Cython extensions (cython_runtime)
    foreign = sorted(name for name, path in loaded.items()
                     if path and name.split(".")[0] not in ALLOWED_PACKAGES
                     and not is_stdlib(path))
    assert not foreign, f"{module} loads more than stdlib + zmq + msgpack: {foreign}"


def test_protocol_imports_no_zmq() -> None:
    tops = {name.split(".")[0] for name in loaded_by("spear_actors.protocol")}
    assert not tops & (FORBIDDEN | {"zmq"}), sorted(tops & (FORBIDDEN | {"zmq"}))


def test_attach_imports_no_actor_machinery() -> None:
    """attach() (the control client) runs in scripts and REPLs beside other programs: it loads
    neither the actor system nor the server's logging."""
    tops = {name.split(".")[0] for name in loaded_by("spear_actors.control.client")}
    assert "zmq" in tops
    assert not tops & FORBIDDEN, sorted(tops & FORBIDDEN)
