"""``python -m dissect`` runs the CLI."""

from .cli import entry

entry()
