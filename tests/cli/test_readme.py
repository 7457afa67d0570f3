"""The instance and spear.toml shown in README.md really run (through ``up --repl``)."""

from __future__ import annotations

import re
from pathlib import Path

from .support import run_cli

README = Path(__file__).resolve().parents[2] / "README.md"


def _block(name: str) -> str:
    match = re.search(rf"<!-- readme-test: {re.escape(name)} -->\n```\w+\n(.*?)```",
                      README.read_text(), re.DOTALL)
    assert match, f"README.md has no block marked readme-test: {name}"
    return match.group(1)


def test_readme_instance_runs_under_up_repl(tmp_path: Path) -> None:
    instance = _block("upper.py")
    assert len(instance.strip().splitlines()) <= 12, "the README promises a short instance"
    (tmp_path / "upper.py").write_text(instance)
    (tmp_path / "spear.toml").write_text(_block("spear.toml"))
    session = ("print(system.execute('upper', b'hi', method='upper', timeout=10))\n"
               "print(sorted(i.state.name for i in system.instances()))\n"
               "try:\n    system.execute('upper', b'x', method='nope', timeout=10)\n"
               "except Exception as exc:\n    print(type(exc).__name__, exc)\n\n")
    result = run_cli("up", "--config", str(tmp_path / "spear.toml"), "--repl",
                     "--run-dir", str(tmp_path / "run"), stdin=session, timeout=45)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "b'HI'" in result.stdout, result.stdout + result.stderr
    assert "['READY', 'READY']" in result.stdout
    assert "ExecutionError" in result.stdout and "unknown method 'nope'" in result.stdout
    assert "2/2 instances ready" in result.stderr
    assert not (tmp_path / "run" / "control.json").exists()
