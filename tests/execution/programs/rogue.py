"""Test instance program that also answers request ids it was never given.

For every EXECUTE_REQUEST it receives, it first sends, on its own authenticated connection,
one extra EXECUTE_RESPONSE (``ok=true``, data ``b"rogue"``) for each offset in
``ROGUE_OFFSETS`` (comma-separated ints, default ``1000``): request id ``id + offset``.
Then it answers the real request normally (echo; method ``sleep`` sleeps the float seconds in
the data and answers ``b"slept"``).
"""

from __future__ import annotations

import os
import sys
import time

from spear_actors.client import InstanceClient
from spear_actors.protocol.client import RequestReceived

OFFSETS = [int(o) for o in os.environ.get("ROGUE_OFFSETS", "1000").split(",") if o]


class RogueClient(InstanceClient):
    def _handle(self, event: object) -> None:  # runs in the client's I/O thread
        if isinstance(event, RequestReceived):
            for offset in OFFSETS:
                rid = event.request_id + offset
                if rid > 0:
                    self._send(self._session.respond(rid, time.time(), b"rogue", True, None))
        super()._handle(event)


def handle(method: str, data: bytes) -> bytes:
    if method == "sleep":
        time.sleep(float(data))
        return b"slept"
    return data


def main() -> int:
    client = RogueClient.from_env()
    try:
        client.connect(timeout=10)
        client.serve(handle)
    finally:
        client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
