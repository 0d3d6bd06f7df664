"""``python -m ponder.cli``: the ``ponder`` command."""

import sys

from . import main

sys.exit(main())
