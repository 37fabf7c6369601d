"""`python -m patchcore`: the command line."""

from patchcore.apps.cli import main

main()
