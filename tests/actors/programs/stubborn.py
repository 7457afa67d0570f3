"""Test instance that will not stop politely: it ignores SIGTERM, authenticates (so its
heartbeats flow from the client's I/O thread) and then never serves, so the SIGNAL stop
changes nothing either. Only SIGKILL ends it.
"""

from __future__ import annotations

import signal
import sys
import threading

from spear_actors.client import InstanceClient


def main() -> int:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    client = InstanceClient.from_env()
    client.connect(timeout=10)
    print("stubborn: connected, ignoring SIGTERM", flush=True)
    threading.Event().wait()  # until SIGKILL
    return 0


if __name__ == "__main__":
    sys.exit(main())
