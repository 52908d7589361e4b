"""`python -m suite` is the `overfit` command."""

from suite.cli import main

main()
