"""Fixtures for the security tests: the reliability tests' own (SpearSystems that are always
shut down and then checked for leftover processes, actors and threads); captured_logs is
suite-wide (tests/conftest.py)."""

from reliability.conftest import system, systems

__all__ = ["system", "systems"]
