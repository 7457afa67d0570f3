"""Starts a long-sleeping child (same process group), writes its pid to $LEFTOVER_PIDFILE,
then exits with code 3 without connecting: its supervisor must not leave the child behind."""

import os
import subprocess
import sys

child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
with open(os.environ["LEFTOVER_PIDFILE"], "w") as f:
    f.write(str(child.pid))
os._exit(3)
