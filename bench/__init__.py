"""Benchmarks for spear_actors, each measured beside its baseline in the same run.

Run with ``scripts/bench [--quick] [--only NAME] [--no-write]``. See :mod:`bench.harness` for
how a ``bench/bench_<name>.py`` module plugs in, and :mod:`bench.baselines` for the baselines.
"""
