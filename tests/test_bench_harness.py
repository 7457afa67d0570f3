"""Harness logic of bench/ (statistics, ratios, targets, report, runner); no real benchmarks."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from bench import harness
from bench.harness import (
    BenchContext,
    Measurement,
    Row,
    Target,
    percentiles,
    render_report,
    render_table,
    run_in_child,
    run_modules,
)


def quiet() -> tuple[list[str], Any]:
    lines: list[str] = []
    return lines, lines.append


def fake_module(name: str, rows: list[Row] | None = None, exc: Exception | None = None,
                calls: list[str] | None = None) -> Any:
    def run(ctx: BenchContext) -> list[Row]:
        if calls is not None:
            calls.append(name)
        if exc is not None:
            raise exc
        return list(rows or [])

    return SimpleNamespace(__name__=f"bench.{name}", run=run)


# ---------------------------------------------------------------- statistics


def test_measurement_stats() -> None:
    m = Measurement("rt", "µs", [5, 1, 3, 2, 4])
    assert (m.median, m.min, m.max) == (3.0, 1.0, 5.0)
    even = Measurement("rt", "µs", [4, 1, 3, 2])
    assert even.median == 2.5
    assert Measurement("x", "ms", [7]).median == 7.0
    assert m.median_in("ms") == pytest.approx(0.003)


def test_measurement_rejects_empty_and_nan() -> None:
    with pytest.raises(ValueError):
        Measurement("x", "ms", [])
    with pytest.raises(ValueError):
        Measurement("x", "ms", [1.0, math.nan])


def test_percentiles_interpolate() -> None:
    data = list(range(1, 101))  # 1..100
    p = percentiles(data, [0, 50, 99, 100])
    assert p[0] == 1
    assert p[100] == 100
    assert p[50] == pytest.approx(50.5)
    assert p[99] == pytest.approx(99.01)
    assert percentiles([3.0], [50, 99]) == {50: 3.0, 99: 3.0}
    with pytest.raises(ValueError):
        percentiles([], [50])
    with pytest.raises(ValueError):
        percentiles([1.0], [101])


def test_measurement_format() -> None:
    assert Measurement("rt", "µs", [82.14, 79.0, 90.2]).format() == "82.1 µs (79.0\u201390.2)"
    assert Measurement("tp", "msg/s", [153_200]).format() == "153.2 k msg/s"


# ---------------------------------------------------------------- ratios and targets


def test_ratio_same_and_converted_units() -> None:
    ours = Measurement("ours", "µs", [160])
    base = Measurement("raw", "µs", [80])
    assert Row(ours, base).ratio == pytest.approx(2.0)
    base_ms = Measurement("raw", "ms", [0.08])
    assert Row(ours, base_ms).ratio == pytest.approx(2.0)
    # incompatible units (msg/s vs tasks/s): plain ratio of the numbers
    assert Row(Measurement("a", "msg/s", [100]), Measurement("b", "tasks/s", [50])).ratio == 2.0
    assert Row(ours).ratio is None
    assert Row(ours, Measurement("zero", "µs", [0])).ratio is None


@pytest.mark.parametrize(
    ("ours", "base", "target", "ok"),
    [
        (160, 80, "ratio <= 2", True),
        (161, 80, "ratio <= 2", False),
        (80_000, 153_000, "ratio >= 0.5", True),
        (70_000, 153_000, "ratio >= 0.5", False),
        (60_000, 11_000, "value >= 5 * baseline", True),
        (50_000, 11_000, "value >= 5 * baseline", False),
        (50_000, 11_000, "value >= baseline * 4", True),
        (40, 31, "value <= baseline + 10", True),
        (42, 31, "value <= baseline + 10", False),
        (5, 6, "value <= baseline", True),
        (0.5, 1, "value < 1", True),
        (1.0, 1, "value < 1", False),
    ],
)
def test_targets(ours: float, base: float, target: str, ok: bool) -> None:
    row = Row(Measurement("ours", "ms", [ours]), Measurement("base", "ms", [base]),
              target=target)
    assert row.ok is ok
    assert row.status == ("pass" if ok else "**MISS**")


def test_target_with_units_converts() -> None:
    # ours in µs, the offset in ms: 31 ms floor + 10 ms = 41 000 µs
    row = Row(Measurement("ready", "µs", [40_500]), Measurement("floor", "ms", [31]),
              target="value <= baseline + 10 ms")
    assert row.ok is True
    t = row.parsed_target
    assert t is not None
    assert t.threshold(row.ours, row.baseline) == pytest.approx(41_000)  # type: ignore[arg-type]
    assert "41.0 k µs" in t.describe(row.ours, row.baseline)  # type: ignore[arg-type]
    assert Row(Measurement("cpu", "%", [0.4]), target="value <= 1 %").ok is True
    assert Row(Measurement("cpu", "%", [1.4]), target="value <= 1%").ok is False
    assert Row(Measurement("mem", "KB", [30]), target="value <= 0.03 MB").ok is True


def test_target_uses_medians() -> None:
    row = Row(Measurement("ours", "µs", [100, 150, 1000]), Measurement("raw", "µs", [80]),
              target="ratio <= 2")
    assert row.ok is True  # median 150 <= 160 although one repeat was 1000


def test_target_without_baseline_is_not_evaluated() -> None:
    row = Row(Measurement("ours", "ms", [1]), target="ratio <= 2")
    assert row.ok is None
    assert row.status == "n/a"
    assert Row(Measurement("ours", "ms", [1])).status == "\u2014"


@pytest.mark.parametrize("text", ["ratio <= 2 ms", "speed >= 1", "value <= banana",
                                  "ratio >= baseline", "value <="])
def test_bad_targets(text: str) -> None:
    with pytest.raises(ValueError):
        Target.parse(text)


def test_target_unit_mismatch_rejected() -> None:
    with pytest.raises(ValueError):
        Row(Measurement("tp", "msg/s", [1]), target="value >= 10 ms")


# ---------------------------------------------------------------- rendering


def sample_rows() -> list[Row]:
    return [
        Row(Measurement("round trip p50", "µs", [150, 140, 170]),
            Measurement("raw zmq round trip p50", "µs", [80, 78, 90]),
            target="ratio <= 2", module="transport", note="10 000 requests"),
        Row(Measurement("pipelined", "msg/s", [60_000, 55_000], higher_is_better=True),
            Measurement("raw pipelined", "msg/s", [153_000, 150_000], higher_is_better=True),
            target="ratio >= 0.5", module="transport"),
        Row.failed("system", "RuntimeError: boom | bad\nthing", module="system"),
    ]


def test_render_table_contains_rows() -> None:
    text = render_table(sample_rows())
    lines = text.splitlines()
    assert lines[0].startswith("| benchmark | ours (median, min")
    assert "| ratio | target | ok |" in lines[0]
    assert any("transport: round trip p50" in ln and "150 µs (140\u2013170)" in ln
               and "raw zmq round trip p50: 80.0 µs (78.0\u201390.0)" in ln
               and "1.88\u00d7" in ln and "ratio <= 2" in ln and "| pass |" in ln
               for ln in lines)
    assert any("transport: pipelined ↑" in ln and "0.38\u00d7" in ln and "**MISS**" in ln
               for ln in lines)
    err = [ln for ln in lines if "system" in ln]
    assert len(err) == 1 and "ERROR" in err[0]
    assert "boom \\| bad thing" in err[0]  # pipe escaped, newline flattened
    assert "[1] 10 000 requests" in text
    # every table line has the same number of columns
    table = [ln for ln in lines if ln.startswith("|")]
    assert len(table) == 2 + 3
    assert {ln.replace("\\|", "").count("|") for ln in table} == {7}


def test_render_report_header() -> None:
    meta = {"date": "2026-01-02T03:04:05Z", "mode": "quick", "repeats": 2,
            "machine": {"cpu": "AMD EPYC", "cores": 2, "usable_cores": 2, "os": "Linux",
                        "python": "3.11.7", "pyzmq": "27.3.0", "libzmq": "4.3.5",
                        "msgpack": "1.2.4"}}
    text = render_report(sample_rows(), meta)
    assert text.startswith("# Benchmarks")
    for needle in ("2026-01-02T03:04:05Z", "AMD EPYC", "2 cores", "Python 3.11.7",
                   "pyzmq 27.3.0", "libzmq 4.3.5", "mode: quick", "--quick",
                   "transport: round trip p50"):
        assert needle in text


def test_machine_info_has_basics() -> None:
    info = harness.machine_info()
    assert info["python"]
    assert info["cores"]
    assert "libzmq" in info


# ---------------------------------------------------------------- runner


def test_erroring_module_gives_error_row_and_others_run() -> None:
    calls: list[str] = []
    good = Row(Measurement("x", "ms", [1, 2]))
    mods = [fake_module("bench_a", exc=RuntimeError("kaput"), calls=calls),
            fake_module("bench_b", rows=[good], calls=calls)]
    lines, printer = quiet()
    rows = run_modules(mods, BenchContext(quick=True, repeats=2, printer=printer))
    assert calls == ["bench_a", "bench_b"]
    assert [r.module for r in rows] == ["a", "b"]
    assert rows[0].error is not None and "RuntimeError: kaput" in rows[0].error
    assert rows[0].status == "ERROR"
    assert rows[1] is good and rows[1].error is None
    assert any("kaput" in ln for ln in lines)  # traceback went to the progress stream


def test_module_returning_garbage_is_an_error() -> None:
    mod = SimpleNamespace(__name__="bench.bench_bad", run=lambda ctx: {"not": "rows"})
    _, printer = quiet()
    rows = run_modules([mod], BenchContext(printer=printer))
    assert len(rows) == 1 and rows[0].error and "TypeError" in rows[0].error


def test_unimportable_module_is_an_error_row() -> None:
    _, printer = quiet()
    rows = run_modules(["bench.bench_does_not_exist_xyz"], BenchContext(printer=printer))
    assert len(rows) == 1 and rows[0].module == "does_not_exist_xyz"
    assert rows[0].error and "ModuleNotFoundError" in rows[0].error


def test_main_exit_codes_and_outputs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ok_row = Row(Measurement("fast", "µs", [300]), Measurement("raw", "µs", [100]),
                 target="ratio <= 2")  # a missed target is reported, not fatal
    _, printer = quiet()
    (tmp_path / "bench").mkdir()
    code = harness.main(["--quick"], modules=[fake_module("bench_ok", rows=[ok_row])],
                        root=tmp_path, printer=printer)
    assert code == 0
    out = capsys.readouterr().out
    assert "ok: fast" in out and "**MISS**" in out
    md = (tmp_path / "BENCHMARKS.md").read_text()
    assert "mode: quick" in md and "ok: fast" in md
    data = json.loads((tmp_path / "bench" / "results" / "latest.json").read_text())
    assert data["meta"]["mode"] == "quick" and data["meta"]["repeats"] == 2
    assert data["rows"][0]["ok"] is False and data["rows"][0]["ratio"] == pytest.approx(3.0)

    code = harness.main(["--no-write"], root=tmp_path / "nowhere", printer=printer,
                        modules=[fake_module("bench_bad", exc=ValueError("x")),
                                 fake_module("bench_ok", rows=[ok_row])])
    assert code == 1
    assert not (tmp_path / "nowhere").exists()


def test_only_selects_modules_then_benchmarks() -> None:
    calls: list[str] = []
    rows_a = [Row(Measurement("round trip", "µs", [1])), Row(Measurement("spawn", "ms", [1]))]
    mods = [fake_module("bench_transport", rows=rows_a, calls=calls),
            fake_module("bench_lifecycle", rows=[], calls=calls)]
    chosen, inner = harness.select_modules(mods, ["transport"])
    assert chosen == [mods[0]] and inner == ()
    chosen, inner = harness.select_modules(mods, ["spawn"])
    assert chosen == mods and inner == ("spawn",)
    _, printer = quiet()
    ctx = BenchContext(only=inner, printer=printer)
    assert ctx.selected("spawn floor") and not ctx.selected("round trip")
    rows = run_modules(chosen, ctx)
    assert [r.name for r in rows] == ["spawn"]


def test_context_helpers() -> None:
    ctx = BenchContext(quick=True, repeats=2, printer=lambda m: None)
    assert ctx.scale(1000, 10) == 10
    assert BenchContext(printer=lambda m: None).scale(1000, 10) == 1000
    calls: list[int] = []

    def compute(value: int) -> int:
        calls.append(value)
        return value

    assert ctx.memo("k", lambda: compute(42)) == 42
    assert ctx.memo("k", lambda: compute(43)) == 42
    assert calls == [42]


def test_discover_finds_baselines_module() -> None:
    assert "bench.bench_baselines" in harness.discover()


# ---------------------------------------------------------------- child processes


def test_run_in_child_returns_and_raises() -> None:
    assert run_in_child(math.factorial, 5, timeout=30) == 120
    with pytest.raises(ValueError):
        run_in_child(math.factorial, -1, timeout=30)


def test_run_in_child_output_and_death() -> None:
    import os

    assert run_in_child(print, "noise on stdout", timeout=30) is None  # does not corrupt
    with pytest.raises(RuntimeError, match="exit code 3"):
        run_in_child(os._exit, 3, timeout=30)


def test_run_in_child_times_out_and_is_killed() -> None:
    t0 = time.monotonic()
    with pytest.raises(TimeoutError):
        run_in_child(time.sleep, 30, timeout=0.5)
    assert time.monotonic() - t0 < 10


def test_child_process_is_always_reaped() -> None:
    import sys

    with pytest.raises(RuntimeError), harness.child_process(
            [sys.executable, "-c", "import time; time.sleep(30)"]) as proc:
        raise RuntimeError("leave the block")
    assert proc.returncode is not None
