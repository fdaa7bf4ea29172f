"""``python -m pxprune`` is the ``pxprune`` command."""

import sys

from .cli import main

sys.exit(main())
