"""``python -m spyglass`` runs the ``spyglass`` command."""

import sys

from spyglass.cli.main import main

sys.exit(main())
