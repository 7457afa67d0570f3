"""Test instance: writes 10 MiB to stdout (1 KiB lines) before connecting, then echoes.

If the spearlet did not drain its stdout pipe, the writes would block on the full pipe and
the instance would never authenticate.
"""

from __future__ import annotations

import sys

from spear_actors.client import InstanceClient

TOTAL = 10 << 20
LINE = "x" * 1023 + "\n"


def main() -> int:
    for _ in range(TOTAL // len(LINE)):
        sys.stdout.write(LINE)
    sys.stdout.flush()
    client = InstanceClient.from_env()
    client.connect(timeout=10)
    try:
        client.serve(lambda _method, data: data)
    finally:
        client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
