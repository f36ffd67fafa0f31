"""``python -m stacembed`` runs the CLI."""

from .cli import entry

entry()
