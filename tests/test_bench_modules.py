"""Every benchmark module imports and exposes ``run(ctx)``; no benchmark is run here."""

from __future__ import annotations

import importlib
import inspect
import py_compile
from pathlib import Path

import pytest

from bench import harness

EXPECTED = {"baselines", "codec", "connections", "execute", "lifecycle", "monitor",
            "transport"}
BENCH_DIR = Path(harness.__file__).resolve().parent


def test_discovery_finds_every_module() -> None:
    names = {harness.short_name(m) for m in harness.discover()}
    assert names >= EXPECTED


@pytest.mark.parametrize("name", harness.discover())
def test_module_imports_and_exposes_run(name: str) -> None:
    mod = importlib.import_module(name)
    run = getattr(mod, "run", None)
    assert callable(run), f"{name} has no run()"
    assert list(inspect.signature(run).parameters) == ["ctx"]


def test_helper_scripts_compile() -> None:
    for script in ("_conn_clients.py", "_echo_server.py"):
        py_compile.compile(str(BENCH_DIR / script), doraise=True)


def test_codec_paths_round_trip() -> None:
    from bench import bench_codec

    bench_codec._check()
    assert bench_codec.fast_path(10) > 0
