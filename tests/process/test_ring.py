"""OutputRings: the bounded per-instance output ``tail`` reads."""

from __future__ import annotations

import threading

from spear_actors.process import DEFAULT_RING_LINES, OutputRings


def test_bounded_per_instance_and_followable() -> None:
    rings = OutputRings()
    for i in range(DEFAULT_RING_LINES + 500):
        rings.append("a-1", "stdout" if i % 2 else "stderr", f"line {i}")
    rings.append("b-1", "stdout", "other")
    lines, last = rings.tail("a-1", n=DEFAULT_RING_LINES * 2)
    assert len(lines) == DEFAULT_RING_LINES and lines[-1] == f"line {DEFAULT_RING_LINES + 499}"
    assert last == DEFAULT_RING_LINES + 500
    assert rings.tail("a-1", n=2)[0] == [f"line {last - 2}", f"line {last - 1}"]
    assert rings.tail("a-1", n=0)[0] == []
    rings.append("a-1", "stdout", "new")
    assert rings.tail("a-1", n=-1, since=last) == (["new"], last + 1)  # what -f prints
    assert rings.tail("b-1")[0] == ["other"] and rings.tail("nobody") == ([], 0)
    rings.drop("a-1")
    assert rings.tail("a-1") == ([], 0)


def test_writers_and_readers_in_threads() -> None:
    rings = OutputRings(lines=50)

    def write(name: str) -> None:
        for i in range(2000):
            rings.append(name, "stdout", str(i))

    threads = [threading.Thread(target=write, args=(f"t-{n}",)) for n in range(4)]
    for t in threads:
        t.start()
    for _ in range(200):
        for n in range(4):
            assert len(rings.tail(f"t-{n}", n=100)[0]) <= 50
    for t in threads:
        t.join(10)
    assert all(rings.tail(f"t-{n}", n=100) == ([str(i) for i in range(1950, 2000)], 2000)
               for n in range(4))
