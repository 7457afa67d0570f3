"""Echo instance with descendants: before connecting it starts two grandchildren that sleep,
one in its process group and one in a session of its own (``setsid``, out of the group), as a
daemonising helper would. Stopping the instance must take both with it."""

from __future__ import annotations

import subprocess
import sys

from spear_actors.client import InstanceClient

SLEEPER = [sys.executable, "-c", "import time; time.sleep(300)"]


def main() -> int:
    helpers = [subprocess.Popen(SLEEPER),
               subprocess.Popen(SLEEPER, start_new_session=True)]
    client = InstanceClient.from_env()
    client.connect(timeout=10)
    try:
        client.serve(lambda method, data: data)
    finally:
        client.close()
    for helper in helpers:  # a polite stop: ours go with us
        helper.kill()
        helper.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
