"""``python -m bench``: discover ``bench/bench_*.py``, run them, print and write the report."""

from bench.harness import main

if __name__ == "__main__":
    raise SystemExit(main())
