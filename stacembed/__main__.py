"""``python -m stacembed`` runs the CLI."""

from .cli import main

main()
