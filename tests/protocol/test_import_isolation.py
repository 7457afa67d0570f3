"""The sans-IO protocol imports only the standard library and msgpack (DESIGN.md section 1)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

FORBIDDEN = ("zmq", "pykka", "psutil", "loguru")
ALLOWED_THIRD_PARTY = {"msgpack", "spear_actors"}


def _allowed(name: str) -> bool:
    top = name.split(".", maxsplit=1)[0]
    # msgpack's compiled extension registers Cython's runtime modules (cython_runtime,
    # _cython_3_x_y): part of msgpack, not another package
    return (top in sys.stdlib_module_names or top in ALLOWED_THIRD_PARTY
            or top == "cython_runtime" or top.startswith("_cython_"))

PROBE = """
import json, sys
before = set(sys.modules)
import {module}
print(json.dumps({{"new": sorted(set(sys.modules) - before), "all": sorted(sys.modules)}}))
"""


def _imported_by(module: str) -> tuple[set[str], set[str]]:
    """(modules newly imported by ``import module``, all modules) in a fresh interpreter."""
    result = subprocess.run([sys.executable, "-c", PROBE.format(module=module)],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    return set(data["new"]), set(data["all"])


@pytest.mark.parametrize("module", [
    "spear_actors.protocol",
    "spear_actors.protocol.server",
    "spear_actors.protocol.client",
    "spear_actors.protocol.auth",
])
def test_protocol_imports_only_stdlib_and_msgpack(module: str) -> None:
    new, everything = _imported_by(module)
    assert module in new
    tops = {name.split(".")[0] for name in everything}
    assert not tops & set(FORBIDDEN), sorted(tops & set(FORBIDDEN))
    foreign = sorted(name for name in new if not _allowed(name))
    assert foreign == []
    assert "msgpack" in {name.split(".")[0] for name in new} | tops
