"""Crashing instance, for supervision demos and tests.

Environment knobs (all optional):
- ``SPEAR_EXAMPLE_EXIT_BEFORE_CONNECT=CODE``: exit with CODE at once (a crash loop).
- ``SPEAR_EXAMPLE_EXIT_AFTER=SECONDS`` (+ ``SPEAR_EXAMPLE_EXIT_CODE``, default 3): serve, then
  exit that long after connecting.
Methods: ``crash`` exits at once with the code in the request data (default 3); anything else
echoes.
"""

from __future__ import annotations

import os
import sys
import threading

from spear_actors.client import InstanceClient


def handler(method: str, data: bytes) -> bytes:
    if method == "crash":
        os._exit(int(data or b"3"))
    if method == "fail":
        raise ValueError(data.decode(errors="replace") or "requested failure")
    return data


def main() -> int:
    early = os.environ.get("SPEAR_EXAMPLE_EXIT_BEFORE_CONNECT")
    if early is not None:
        print(f"crash example: exiting with {early} before connecting", file=sys.stderr)
        return int(early)
    client = InstanceClient.from_env()
    client.connect(timeout=10)
    after = os.environ.get("SPEAR_EXAMPLE_EXIT_AFTER")
    if after is not None:
        code = int(os.environ.get("SPEAR_EXAMPLE_EXIT_CODE", "3"))
        threading.Timer(float(after), os._exit, args=(code,)).start()
    try:
        client.serve(handler)
    finally:
        client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
