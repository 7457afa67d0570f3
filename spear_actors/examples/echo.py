"""Echo instance: answers every request with its own data, whatever the method.

Run by the spearlet (it reads the SPEAR_* environment):
``InstanceConfig(command=[sys.executable, "-m", "spear_actors.examples.echo"])``.
"""

from __future__ import annotations

import sys

from spear_actors.client import InstanceClient


def echo(method: str, data: bytes) -> bytes:
    return data


def main() -> int:
    client = InstanceClient.from_env()
    client.connect(timeout=10)
    try:
        reason = client.serve(echo)
    finally:
        client.close()
    print(f"echo instance stopping: {reason}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
