"""Test instance program: answers every request with ``b"<pid>:" + data``.

Lets the execution tests tell which process served each request.
"""

from __future__ import annotations

import os
import sys

from spear_actors.client import InstanceClient

PREFIX = f"{os.getpid()}:".encode()


def handle(method: str, data: bytes) -> bytes:
    return PREFIX + data


def main() -> int:
    client = InstanceClient.from_env()
    try:
        client.connect(timeout=10)
        client.serve(handle)
    finally:
        client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
