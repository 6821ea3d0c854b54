"""``python -m veil`` runs the command line."""

from veil.cli.main import run

run()
