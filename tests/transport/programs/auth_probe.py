"""Test instance program: connect once and report the outcome through the exit code.

Exit 0 and print ``session <id>`` if authenticated; exit 3 and print the
``AuthenticationError`` if refused; exit 4 on a timeout.
"""

from __future__ import annotations

import sys

from spear_actors.client import InstanceClient
from spear_actors.errors import AuthenticationError, TimeoutError

EXIT_REFUSED = 3
EXIT_TIMEOUT = 4


def main() -> int:
    client = InstanceClient.from_env()
    try:
        session_id = client.connect(timeout=10)
    except AuthenticationError as exc:
        print(f"{type(exc).__name__}: {exc}", flush=True)
        return EXIT_REFUSED
    except TimeoutError as exc:
        print(f"{type(exc).__name__}: {exc}", flush=True)
        return EXIT_TIMEOUT
    finally:
        client.close()
    print(f"session {session_id}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
