"""`python -m resolver` runs the command-line interface."""

from resolver.cli import main

main()
