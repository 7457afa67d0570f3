"""Test instance program: ``echo`` (default), ``sleep`` (data = seconds) and ``fail`` methods.

Started by the transport tests with the SPEAR_* environment; prints how ``serve`` ended.
"""

from __future__ import annotations

import sys
import time

from spear_actors.client import InstanceClient


def handle(method: str, data: bytes) -> bytes:
    if method == "sleep":
        time.sleep(float(data))
        return b"slept " + data
    if method == "fail":
        raise RuntimeError(data.decode())
    return data


def main() -> int:
    client = InstanceClient.from_env()
    try:
        client.connect(timeout=10)
        reason = client.serve(handle)
    finally:
        client.close()
    print(f"serve returned: {reason}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
