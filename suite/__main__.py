"""`python -m suite` is the `overfit` command."""

from suite.cli import main

if __name__ == "__main__":  # not in a spawned worker, which imports this module too
    main()
