"""Fixtures for the security tests: the reliability tests' own (SpearSystems that are always
shut down and then checked for leftover processes, actors and threads; captured logs)."""

from reliability.conftest import captured_logs, system, systems

__all__ = ["captured_logs", "system", "systems"]
