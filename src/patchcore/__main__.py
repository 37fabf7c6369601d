"""`python -m patchcore`: the command line."""

from patchcore.cli import main

main()
