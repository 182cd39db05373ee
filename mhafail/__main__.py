"""``python -m mhafail`` runs the ``mhafail`` command."""

import sys

from mhafail.cli import main

sys.exit(main())
