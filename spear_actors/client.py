"""What instance programs import: ``from spear_actors.client import InstanceClient``.

Loads only the standard library, zmq and msgpack (no pykka, psutil or loguru), so an instance
starts as fast as Python and ``import zmq`` allow.
"""

from .transport.client import Handler, InstanceClient

__all__ = ["Handler", "InstanceClient"]
