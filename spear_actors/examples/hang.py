"""Hanging instance, for health-check demos and tests.

``SPEAR_EXAMPLE_HANG``:
- ``before_auth``: never connects (the supervisor's startup_timeout must catch it).
- ``after_auth``: authenticates, then freezes the whole process with SIGSTOP (heartbeats stop:
  the spearlet must notice, kill it and restart it).
- unset: serves; method ``sleep`` sleeps for the float seconds in the data, then answers
  ``b"slept"`` (heartbeats keep flowing meanwhile); anything else echoes.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

from spear_actors.client import InstanceClient


def handler(method: str, data: bytes) -> bytes:
    if method == "sleep":
        time.sleep(float(data or b"1"))
        return b"slept"
    return data


def main() -> int:
    mode = os.environ.get("SPEAR_EXAMPLE_HANG", "")
    if mode == "before_auth":
        threading.Event().wait()  # forever, until killed
    client = InstanceClient.from_env()
    client.connect(timeout=10)
    if mode == "after_auth":
        os.kill(os.getpid(), signal.SIGSTOP)
    try:
        client.serve(handler)
    finally:
        client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
