"""Benchmark harness: measurements, comparisons against baselines, the runner and the report.

The machines we run on are shared and noisy, so a figure means something only beside the
baseline measured in the same run. Every benchmark module therefore returns :class:`Row` s,
each pairing *our* :class:`Measurement` with the baseline's, and the report shows the ratio
(ours / baseline, on the medians) and whether an optional :class:`Target` is met.

A benchmark module is ``bench/bench_<name>.py`` exposing ``run(ctx: BenchContext) -> list[Row]``.
``python -m bench`` discovers them, runs each (a module that raises becomes an error row and
the others still run), prints a markdown table, and writes ``BENCHMARKS.md`` and
``bench/results/latest.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import importlib
import json
import math
import operator
import os
import pickle
import pkgutil
import platform
import re
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Literal, Protocol, TypeVar

T = TypeVar("T")

DASH = "\u2013"  # en dash, for ranges
TIMES = "\u00d7"  # multiplication sign, for ratios

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent

# --------------------------------------------------------------------------------------------
# Units
# --------------------------------------------------------------------------------------------

_UNIT_FAMILIES: tuple[dict[str, float], ...] = (
    {"ns": 1e-9, "µs": 1e-6, "μs": 1e-6, "us": 1e-6, "ms": 1e-3, "s": 1.0},
    {"B": 1.0, "KB": 1024.0, "KiB": 1024.0, "MB": 1024.0**2, "MiB": 1024.0**2,
     "GB": 1024.0**3, "GiB": 1024.0**3},
)


def convert(value: float, from_unit: str, to_unit: str) -> float | None:
    """Convert ``value`` between units of one family (time, size); None if not convertible."""
    if from_unit == to_unit:
        return value
    for family in _UNIT_FAMILIES:
        if from_unit in family and to_unit in family:
            return value * family[from_unit] / family[to_unit]
    return None


# --------------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------------


def percentiles(samples: Sequence[float], ps: Sequence[float]) -> dict[float, float]:
    """Percentiles of ``samples`` (linear interpolation between closest ranks, like numpy).

    ``ps`` are in 0..100. Returns ``{p: value}``; ``percentiles(s, [50, 99])[99]`` works.
    """
    if not samples:
        raise ValueError("percentiles of an empty sample")
    data = sorted(samples)
    last = len(data) - 1
    out: dict[float, float] = {}
    for p in ps:
        if not 0 <= p <= 100:
            raise ValueError(f"percentile out of range: {p}")
        pos = last * p / 100.0
        lo = math.floor(pos)
        hi = min(lo + 1, last)
        frac = pos - lo
        out[p] = data[lo] + (data[hi] - data[lo]) * frac
    return out


def _median(values: Sequence[float]) -> float:
    return percentiles(values, [50])[50]


@dataclass
class Measurement:
    """One measured quantity: a value per repeat, summarised by median, min and max.

    ``Measurement(name, unit, values, higher_is_better=False)``; ``unit`` is free text but the
    time units (ns, µs/us, ms, s) and size units (B, KB/KiB, MB/MiB, GB/GiB) convert between
    each other in ratios and targets.
    """

    name: str
    unit: str
    values: list[float]
    higher_is_better: bool = False

    def __post_init__(self) -> None:
        self.values = [float(v) for v in self.values]
        if not self.values:
            raise ValueError(f"measurement {self.name!r} has no values")
        if any(math.isnan(v) for v in self.values):
            raise ValueError(f"measurement {self.name!r} has NaN values")

    @property
    def median(self) -> float:
        return _median(self.values)

    @property
    def min(self) -> float:
        return min(self.values)

    @property
    def max(self) -> float:
        return max(self.values)

    def median_in(self, unit: str) -> float:
        """The median converted to ``unit`` (ValueError if the units do not convert)."""
        v = convert(self.median, self.unit, unit)
        if v is None:
            raise ValueError(f"cannot convert {self.unit!r} to {unit!r}")
        return v

    def format(self) -> str:
        """``"82.1 µs (79.0-90.2)"`` (en dash); no range when there is a single value."""
        text = f"{format_number(self.median)} {self.unit}".rstrip()
        if len(self.values) > 1:
            text += f" ({format_number(self.min)}{DASH}{format_number(self.max)})"
        return text

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "unit": self.unit,
            "higher_is_better": self.higher_is_better,
            "values": self.values,
            "median": self.median,
            "min": self.min,
            "max": self.max,
        }


def format_number(v: float) -> str:
    """Short human form: 3 significant figures, k/M suffixes for large numbers."""
    a = abs(v)
    if a == 0:
        return "0"
    if a >= 1e6:
        return f"{v / 1e6:.2f} M"
    if a >= 1e4:
        return f"{v / 1e3:.1f} k"
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    if a >= 1:
        return f"{v:.2f}"
    return f"{v:.3g}"


# --------------------------------------------------------------------------------------------
# Targets
# --------------------------------------------------------------------------------------------

_OPS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le,
    ">=": operator.ge,
    "<": operator.lt,
    ">": operator.gt,
}
_SYMBOL = {"<=": "≤", ">=": "≥", "<": "<", ">": ">"}
_NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_TARGET_RE = re.compile(r"^\s*(?P<subject>ratio|value)\s*(?P<op><=|>=|<|>)\s*(?P<rhs>.+?)\s*$")
_RHS_CONST = re.compile(rf"^(?P<num>{_NUM})\s*(?P<unit>\S+)?$")
_RHS_BASELINE = re.compile(r"^baseline$")
_RHS_PLUS = re.compile(rf"^baseline\s*(?P<sign>[+-])\s*(?P<num>{_NUM})\s*(?P<unit>\S+)?$")
_RHS_TIMES_L = re.compile(rf"^(?P<num>{_NUM})\s*[*x\u00d7]\s*baseline$")
_RHS_TIMES_R = re.compile(rf"^baseline\s*[*x\u00d7]\s*(?P<num>{_NUM})$")


@dataclass(frozen=True)
class Target:
    """A pass/fail criterion on a row, evaluated on the medians.

    Written as text (``Target.parse`` or just a ``str`` given to :class:`Row`):

    - ``"ratio <= 2"``, ``"ratio >= 0.5"``: ours / baseline;
    - ``"value <= 1 %"``, ``"value < 10 ms"``: ours against a constant (unit converted);
    - ``"value <= baseline + 10 ms"``, ``"value >= 5 * baseline"``, ``"value <= baseline"``.
    """

    text: str
    subject: Literal["ratio", "value"]
    op: str
    form: Literal["const", "plus", "times"]
    number: float
    unit: str | None = None

    @classmethod
    def parse(cls, text: str) -> Target:
        m = _TARGET_RE.match(text)
        if not m:
            raise ValueError(f"bad target {text!r}: expected 'ratio|value <op> <expr>'")
        subject: Literal["ratio", "value"] = "ratio" if m["subject"] == "ratio" else "value"
        op, rhs = m["op"], m["rhs"]
        if c := _RHS_CONST.match(rhs):
            unit = c["unit"]
            if subject == "ratio" and unit not in (None, "x", TIMES):
                raise ValueError(f"bad target {text!r}: a ratio has no unit")
            if subject == "ratio":
                unit = None
            return cls(text.strip(), subject, op, "const", float(c["num"]), unit)
        if subject == "ratio":
            raise ValueError(f"bad target {text!r}: a ratio compares with a number")
        if _RHS_BASELINE.match(rhs):
            return cls(text.strip(), subject, op, "times", 1.0)
        if p := _RHS_PLUS.match(rhs):
            num = float(p["num"]) * (1 if p["sign"] == "+" else -1)
            return cls(text.strip(), subject, op, "plus", num, p["unit"])
        if t := _RHS_TIMES_L.match(rhs) or _RHS_TIMES_R.match(rhs):
            return cls(text.strip(), subject, op, "times", float(t["num"]))
        raise ValueError(f"bad target {text!r}: cannot read {rhs!r}")

    def check_units(self, ours: Measurement) -> None:
        """ValueError if the target's unit does not convert to ``ours.unit``."""
        if (self.subject == "value" and self.unit is not None
                and convert(1.0, self.unit, ours.unit) is None):
            raise ValueError(
                f"target {self.text!r}: unit {self.unit!r} does not convert to "
                f"{ours.unit!r} of {ours.name!r}"
            )

    def threshold(self, ours: Measurement, baseline: Measurement | None) -> float | None:
        """The number the subject is compared with, in ours' unit (None: needs a baseline)."""
        if self.subject == "ratio":
            return self.number
        if self.form == "const":
            v = convert(self.number, self.unit or ours.unit, ours.unit)
            return v
        if baseline is None:
            return None
        base = baseline_in_unit(baseline, ours.unit)
        if self.form == "times":
            return self.number * base
        offset = convert(self.number, self.unit or ours.unit, ours.unit)
        return None if offset is None else base + offset

    def evaluate(self, ours: Measurement, baseline: Measurement | None) -> bool | None:
        """True/False, or None when it cannot be evaluated (no baseline to compare with)."""
        limit = self.threshold(ours, baseline)
        if limit is None:
            return None
        if self.subject == "ratio":
            r = ratio(ours, baseline)
            if r is None:
                return None
            return _OPS[self.op](r, limit)
        return _OPS[self.op](ours.median, limit)

    def describe(self, ours: Measurement, baseline: Measurement | None) -> str:
        """The target text, plus the resolved limit when it depends on the baseline."""
        if self.subject == "value" and self.form != "const":
            limit = self.threshold(ours, baseline)
            if limit is not None:
                return f"{self.text} ({_SYMBOL[self.op]} {format_number(limit)} {ours.unit})"
        return self.text


def baseline_in_unit(baseline: Measurement, unit: str) -> float:
    """Baseline median in ``unit`` when convertible, else as it is (e.g. msg/s vs tasks/s)."""
    v = convert(baseline.median, baseline.unit, unit)
    return baseline.median if v is None else v


def ratio(ours: Measurement, baseline: Measurement | None) -> float | None:
    """ours.median / baseline.median (units converted where they can be); None if undefined."""
    if baseline is None:
        return None
    base = baseline_in_unit(baseline, ours.unit)
    if base == 0:
        return None
    return ours.median / base


# --------------------------------------------------------------------------------------------
# Rows
# --------------------------------------------------------------------------------------------


@dataclass
class Row:
    """One line of the report: our measurement beside its baseline.

    ``Row(ours, baseline=None, target=None, note="")``; ``target`` is a :class:`Target` or its
    text. Error rows (a module that raised) are made with :meth:`Row.failed`.
    """

    ours: Measurement | None
    baseline: Measurement | None = None
    target: Target | str | None = None
    note: str = ""
    error: str | None = None
    module: str = ""
    name: str = ""

    def __post_init__(self) -> None:
        if isinstance(self.target, str):
            self.target = Target.parse(self.target)
        if self.ours is None and self.error is None:
            raise ValueError("a row needs a measurement or an error")
        if not self.name:
            self.name = self.ours.name if self.ours is not None else self.module or "error"
        if self.ours is not None and isinstance(self.target, Target):
            self.target.check_units(self.ours)

    @classmethod
    def failed(cls, name: str, error: str, module: str = "") -> Row:
        return cls(ours=None, error=error, module=module, name=name)

    @property
    def parsed_target(self) -> Target | None:
        return self.target if isinstance(self.target, Target) else None

    @property
    def ratio(self) -> float | None:
        if self.ours is None:
            return None
        return ratio(self.ours, self.baseline)

    @property
    def ok(self) -> bool | None:
        """True/False if the row has a target that could be evaluated; else None."""
        t = self.parsed_target
        if self.ours is None or t is None:
            return None
        return t.evaluate(self.ours, self.baseline)

    @property
    def status(self) -> str:
        if self.error is not None:
            return "ERROR"
        ok = self.ok
        if ok is None:
            return "n/a" if self.parsed_target is not None else "—"
        return "pass" if ok else "**MISS**"

    def to_dict(self) -> dict[str, Any]:
        t = self.parsed_target
        return {
            "module": self.module,
            "name": self.name,
            "ours": self.ours.to_dict() if self.ours else None,
            "baseline": self.baseline.to_dict() if self.baseline else None,
            "ratio": self.ratio,
            "target": t.text if t else None,
            "threshold": t.threshold(self.ours, self.baseline) if t and self.ours else None,
            "ok": self.ok,
            "note": self.note,
            "error": self.error,
        }


Comparison = Row  # the brief's other name for a row


# --------------------------------------------------------------------------------------------
# Context and runner
# --------------------------------------------------------------------------------------------


def _stderr_progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass
class BenchContext:
    """What a benchmark module's ``run(ctx)`` gets.

    - ``quick``: a short run for checking a change (fewer samples, ``repeats`` 2);
    - ``repeats``: how many times each figure is measured (median/min/max over these);
    - ``progress(msg)``: prints to stderr (prefixed with the module and elapsed time);
    - ``only``: name patterns for benchmarks *inside* modules (empty: all); modules test
      ``ctx.selected(name, ...)`` before long work and the runner drops unselected rows;
    - ``cache`` / ``memo(key, fn)``: share a figure (say a baseline) between modules in a run.
    """

    quick: bool = False
    repeats: int = 5
    only: tuple[str, ...] = ()
    printer: Callable[[str], None] = _stderr_progress
    module: str = ""
    cache: dict[str, Any] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)

    def progress(self, msg: str) -> None:
        prefix = f"[bench {time.monotonic() - self.started:6.1f}s]"
        if self.module:
            prefix += f" {self.module}:"
        self.printer(f"{prefix} {msg}")

    def scale(self, normal: int, quick: int) -> int:
        """``quick`` in quick mode, else ``normal`` (sample counts)."""
        return quick if self.quick else normal

    def selected(self, *names: str) -> bool:
        """True if no ``--only`` filter applies inside modules or any name matches it."""
        if not self.only:
            return True
        return any(_matches(n, self.only) for n in names)

    def memo(self, key: str, fn: Callable[[], T]) -> T:
        if key not in self.cache:
            self.cache[key] = fn()
        result: T = self.cache[key]
        return result


class BenchModule(Protocol):
    __name__: str

    def run(self, ctx: BenchContext) -> list[Row]: ...


ModuleSpec = str | ModuleType | BenchModule


def _matches(name: str, patterns: Sequence[str]) -> bool:
    low = name.lower()
    return any(p.lower() in low for p in patterns)


def short_name(module_name: str) -> str:
    """``bench.bench_transport`` -> ``transport``."""
    last = module_name.rsplit(".", 1)[-1]
    return last.removeprefix("bench_")


def discover() -> list[str]:
    """Full names of the ``bench/bench_*.py`` modules, sorted."""
    names = [
        f"bench.{m.name}"
        for m in pkgutil.iter_modules([str(BENCH_DIR)])
        if m.name.startswith("bench_")
    ]
    return sorted(names)


def select_modules(
    specs: Sequence[ModuleSpec], only: Sequence[str]
) -> tuple[list[ModuleSpec], tuple[str, ...]]:
    """Apply ``--only``: modules whose name matches; if none does, every module runs and the
    patterns filter benchmarks inside them (returned as the context's ``only``)."""
    if not only:
        return list(specs), ()
    hits = [s for s in specs if _matches(_spec_name(s), only)]
    if hits:
        return hits, ()
    return list(specs), tuple(only)


def _spec_name(spec: ModuleSpec) -> str:
    if isinstance(spec, str):
        return short_name(spec)
    return short_name(getattr(spec, "__name__", type(spec).__name__))


def _describe_exc(exc: BaseException) -> str:
    msg = f"{type(exc).__name__}: {exc}".strip()
    tb = traceback.extract_tb(exc.__traceback__)
    if tb:
        last = tb[-1]
        msg += f" (at {Path(last.filename).name}:{last.lineno})"
    return msg


def run_modules(specs: Sequence[ModuleSpec], ctx: BenchContext) -> list[Row]:
    """Run each module's ``run(ctx)``; a module that fails to import, raises or returns
    something other than rows gives one error row, and the next module still runs."""
    rows: list[Row] = []
    for spec in specs:
        name = _spec_name(spec)
        ctx.module = name
        t0 = time.monotonic()
        ctx.progress("start")
        try:
            mod: Any = importlib.import_module(spec) if isinstance(spec, str) else spec
            result = mod.run(ctx)
            if not isinstance(result, list) or not all(isinstance(r, Row) for r in result):
                raise TypeError(f"run() returned {type(result).__name__}, not list[Row]")
            for r in result:
                r.module = r.module or name
            if ctx.only:
                result = [r for r in result if r.error is not None or ctx.selected(r.name)]
            rows.extend(result)
            ctx.progress(f"done in {time.monotonic() - t0:.1f} s, {len(result)} rows")
        except Exception as exc:
            ctx.progress(f"FAILED after {time.monotonic() - t0:.1f} s")
            ctx.printer("".join(traceback.format_exception(exc)).rstrip())
            rows.append(Row.failed(name, _describe_exc(exc), module=name))
        finally:
            ctx.module = ""
    return rows


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def _format_ratio(r: float | None) -> str:
    if r is None:
        return "—"
    if r >= 100:
        return f"{r:.0f}{TIMES}"
    if r >= 0.01:
        return f"{r:.2f}{TIMES}"
    return f"{r:.3g}{TIMES}"


def render_table(rows: Sequence[Row]) -> str:
    """The markdown table (plus footnotes for rows with notes)."""
    lines = [
        f"| benchmark | ours (median, min{DASH}max) | baseline (median, min{DASH}max) "
        "| ratio | target | ok |",
        "|---|---|---|---|---|---|",
    ]
    notes: list[str] = []
    for row in rows:
        bench = row.name
        if row.module:
            bench = f"{row.module}: {bench}"
        if row.ours is not None:
            bench += " ↑" if row.ours.higher_is_better else " ↓"
        if row.note:
            notes.append(row.note)
            bench += f" [{len(notes)}]"
        if row.error is not None:
            ours = f"error: {row.error}"
            base = target = ratio_s = ""
        else:
            assert row.ours is not None
            ours = row.ours.format()
            base = f"{row.baseline.name}: {row.baseline.format()}" if row.baseline else "—"
            ratio_s = _format_ratio(row.ratio)
            t = row.parsed_target
            target = t.describe(row.ours, row.baseline) if t else "—"
        cells = [bench, ours, base, ratio_s, target, row.status]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    if notes:
        lines.append("")
        lines.extend(f"[{i}] {_cell(n)}" for i, n in enumerate(notes, 1))
    return "\n".join(lines) + "\n"


def _read_cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown"


def _git_rev() -> str | None:
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True,
            text=True, timeout=5, check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{rev}{' (dirty)' if dirty else ''}"


def machine_info() -> dict[str, Any]:
    """Where and with what the figures were measured."""
    info: dict[str, Any] = {
        "cpu": _read_cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "python_impl": platform.python_implementation(),
    }
    with contextlib.suppress(OSError, AttributeError):
        info["loadavg"] = [round(x, 2) for x in os.getloadavg()]
    try:
        import zmq

        info["pyzmq"] = zmq.__version__
        info["libzmq"] = zmq.zmq_version()
    except ImportError:
        pass
    try:
        import msgpack

        info["msgpack"] = ".".join(str(x) for x in msgpack.version)
    except ImportError:
        pass
    return info


def render_report(rows: Sequence[Row], meta: dict[str, Any]) -> str:
    """BENCHMARKS.md: a header (date, machine, mode) and the table."""
    m = meta.get("machine", {})
    mode = meta.get("mode", "?")
    lines = [
        "# Benchmarks",
        "",
        f"Generated by `scripts/bench{' --quick' if mode == 'quick' else ''}` on "
        f"{meta.get('date', '?')}.",
        "",
        f"- machine: {m.get('cpu', '?')}, {m.get('cores', '?')} cores "
        f"({m.get('usable_cores', '?')} usable), {m.get('os', '?')}"
        + (f", load average at start {' '.join(map(str, m['loadavg']))}"
           if "loadavg" in m else ""),
        f"- software: Python {m.get('python', '?')}, pyzmq {m.get('pyzmq', '?')}, "
        f"libzmq {m.get('libzmq', '?')}, msgpack {m.get('msgpack', '?')}",
        f"- mode: {mode}, {meta.get('repeats', '?')} repeats per figure"
        + (f", only {', '.join(meta['only'])}" if meta.get("only") else "")
        + (f"; git {meta['git']}" if meta.get("git") else "")
        + (f"; took {meta['elapsed_s']:.0f} s" if "elapsed_s" in meta else ""),
        "",
        f"Each figure is the median over the repeats (min{DASH}max in brackets), measured",
        "beside its baseline in the same run on a shared machine: compare the ratio (ours /",
        "baseline, on the medians), not the absolute numbers. ↓ lower is better, ↑ higher is",
        "better.",
        "",
        render_table(rows).rstrip("\n"),
        "",
    ]
    return "\n".join(lines)


def write_outputs(rows: Sequence[Row], meta: dict[str, Any], root: Path) -> tuple[Path, Path]:
    """Write ``root/BENCHMARKS.md`` and ``root/bench/results/latest.json``."""
    md = root / "BENCHMARKS.md"
    md.write_text(render_report(rows, meta), encoding="utf-8")
    results = root / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    payload = {"meta": meta, "rows": [r.to_dict() for r in rows]}
    text = json.dumps(payload, indent=2, ensure_ascii=False)
    latest = results / "latest.json"
    latest.write_text(text + "\n", encoding="utf-8")
    stamp = str(meta.get("date", "")).replace(":", "").replace("-", "")[:15] or "run"
    (results / f"{stamp}-{meta.get('mode', 'run')}.json").write_text(text + "\n",
                                                                    encoding="utf-8")
    return md, latest


# --------------------------------------------------------------------------------------------
# Child processes
# --------------------------------------------------------------------------------------------


def stop_process(proc: subprocess.Popen[Any], timeout: float = 2.0) -> int | None:
    """Terminate (then kill) ``proc`` unless it has exited, and reap it. Returns its code."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait(timeout=timeout)
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()
    return proc.returncode


@contextlib.contextmanager
def child_process(args: Sequence[str], timeout: float = 2.0, **popen_kwargs: Any
                  ) -> Iterator[subprocess.Popen[Any]]:
    """``subprocess.Popen(args, **popen_kwargs)`` that is always terminated/killed and reaped
    when the block exits, however it exits."""
    popen_kwargs.setdefault("stdin", subprocess.DEVNULL)
    proc: subprocess.Popen[Any] = subprocess.Popen(list(args), **popen_kwargs)
    try:
        yield proc
    finally:
        stop_process(proc, timeout)


# The child reads two pickles from stdin: the parent's sys.path, then (fn, args, kwargs). It
# answers one pickle (ok, result-or-exception) on its original stdout; anything fn prints goes
# to stderr so it cannot corrupt the answer.
_CHILD_RUNNER = """
import os, pickle, sys
inp = sys.stdin.buffer
sys.path[:] = pickle.load(inp)
out = os.fdopen(os.dup(1), "wb")
os.dup2(2, 1)
try:
    fn, args, kwargs = pickle.load(inp)
    answer = (True, fn(*args, **kwargs))
except BaseException as exc:
    answer = (False, exc)
try:
    data = pickle.dumps(answer)
except Exception as exc:
    data = pickle.dumps((False, RuntimeError(f"unpicklable result: {exc!r}")))
out.write(data)
out.flush()
"""


def run_in_child(fn: Callable[..., T], *args: Any, timeout: float = 120.0,
                 **kwargs: Any) -> T:
    """Run ``fn(*args, **kwargs)`` in a fresh interpreter (``sys.executable -c``) and return
    its result.

    ``fn``, the arguments and the result must pickle (``fn`` at a module's top level,
    importable with this process's ``sys.path``). The child's exception is re-raised here;
    past ``timeout`` seconds a ``TimeoutError`` is raised. The child is always terminated,
    then killed, and reaped. (No multiprocessing: nothing such as a resource tracker is left
    running afterwards.)
    """
    name = getattr(fn, "__qualname__", repr(fn))
    request = pickle.dumps(list(sys.path)) + pickle.dumps((fn, args, kwargs))
    with child_process([sys.executable, "-c", _CHILD_RUNNER], stdin=subprocess.PIPE,
                       stdout=subprocess.PIPE) as proc:
        try:
            out, _ = proc.communicate(request, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise TimeoutError(f"{name} did not finish in {timeout} s") from None
        if not out:
            raise RuntimeError(f"child running {name} died (exit code {proc.returncode})")
        ok, value = pickle.loads(out)
    if not ok:
        raise value
    result: T = value
    return result


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="Run the benchmarks in bench/bench_*.py beside their baselines.",
    )
    p.add_argument("--quick", action="store_true", help="short run for checking a change")
    p.add_argument("--only", action="append", default=[], metavar="NAME",
                   help="run only modules (or, if no module matches, benchmarks) whose name "
                        "contains NAME; repeatable, or comma-separated")
    p.add_argument("--no-write", action="store_true",
                   help="print the table only; do not write BENCHMARKS.md or JSON")
    p.add_argument("--repeats", type=int, default=None,
                   help="repeats per figure (default 5, quick 2)")
    p.add_argument("--list", action="store_true", help="list benchmark modules and exit")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None, modules: Sequence[ModuleSpec] | None = None,
         root: Path | None = None, printer: Callable[[str], None] = _stderr_progress) -> int:
    """Entry point of ``python -m bench``. Exit code 1 if any module errored (missed targets
    are reported, not fatal), 2 on a usage problem, else 0."""
    args = parse_args(argv)
    specs: Sequence[ModuleSpec] = discover() if modules is None else modules
    if args.list:
        for s in specs:
            print(_spec_name(s))
        return 0
    only = tuple(p.strip() for item in args.only for p in item.split(",") if p.strip())
    chosen, inner_only = select_modules(specs, only)
    if not chosen:
        printer("bench: no benchmark modules found")
        return 2
    repeats = args.repeats if args.repeats is not None else (2 if args.quick else 5)
    if repeats < 1:
        printer("bench: --repeats must be >= 1")
        return 2
    ctx = BenchContext(quick=args.quick, repeats=repeats, only=inner_only, printer=printer)
    started = _dt.datetime.now(_dt.timezone.utc)
    meta: dict[str, Any] = {
        "date": started.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "mode": "quick" if args.quick else "normal",
        "repeats": repeats,
        "only": list(only),
        "modules": [_spec_name(s) for s in chosen],
        "machine": machine_info(),
        "git": _git_rev(),
    }
    ctx.progress(f"running {', '.join(meta['modules'])} ({meta['mode']}, {repeats} repeats)")
    rows = run_modules(chosen, ctx)
    meta["elapsed_s"] = round(time.monotonic() - ctx.started, 1)
    errors = sum(1 for r in rows if r.error is not None)
    missed = sum(1 for r in rows if r.ok is False)
    meta["errors"] = errors
    meta["missed_targets"] = missed
    sys.stdout.write(render_table(rows))
    sys.stdout.flush()
    if not args.no_write:
        md, js = write_outputs(rows, meta, root or REPO_ROOT)
        ctx.progress(f"wrote {md} and {js}")
    ctx.progress(f"{len(rows)} rows, {missed} missed targets, {errors} errors, "
                 f"{meta['elapsed_s']} s")
    return 1 if errors else 0
