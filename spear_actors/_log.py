"""The library's logger. Importing this disables spear_actors' log output (the library
default, as loguru recommends); the CLI and tests call ``logger.enable("spear_actors")``."""

from loguru import logger

logger.disable("spear_actors")

__all__ = ["logger"]
