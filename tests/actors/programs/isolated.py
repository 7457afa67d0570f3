"""An instance for the isolation tests (run it, never import it).

At start, if ``$EAT_MIB`` is set and the file ``$EAT_ONCE`` does not exist yet, it creates that
file and allocates (and touches) ``$EAT_MIB`` MiB before connecting: the first generation is
OOM-killed under a smaller memory limit, the next one serves. Methods:

* ``daemon`` — start ``sleep 300`` in a session of its own, orphaned at once (``setsid`` in a
  background job of a shell that exits), and answer its pid: only the cgroup still knows it;
* ``probe`` — ``data`` is a TCP port: try 127.0.0.1:port and answer ``connected`` or the error;
* anything else — echo.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from spear_actors.client import InstanceClient


def handle(method: str, data: bytes) -> bytes:
    if method == "daemon":
        out = subprocess.run(["sh", "-c", "setsid sleep 300 </dev/null >/dev/null 2>&1 & "
                              "echo $!"], capture_output=True, check=True)
        return out.stdout.strip()
    if method == "probe":
        try:
            with socket.create_connection(("127.0.0.1", int(data)), timeout=2):
                return b"connected"
        except OSError as exc:
            return f"{type(exc).__name__}: {exc}".encode()
    return data


def main() -> int:
    eat, once = os.environ.get("EAT_MIB"), os.environ.get("EAT_ONCE")
    if eat and once and not os.path.exists(once):
        with open(once, "w"):
            pass
        hog = [bytearray(1 << 20) for _ in range(int(eat))]  # bytearray touches its pages
        print(f"allocated {len(hog)} MiB: the limit did not hold", file=sys.stderr)
        return 9
    client = InstanceClient.from_env()
    client.connect(timeout=10)
    try:
        client.serve(handle)
    finally:
        client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
