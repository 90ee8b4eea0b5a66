"""``python -m spyglass`` runs the ``spyglass`` command."""

from spyglass.cli.main import entry

entry()
