"""``python -m spear_actors.cli``: the same as the ``spear-actors`` command."""

import sys

from . import main

sys.exit(main())
