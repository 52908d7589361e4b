"""`python -m suite` is the `overfit` command.

Owns: running `suite.cli.main` when the package is run as a program. Must not do anything else
on import, nor start the command then: a worker process started by `multiprocessing` (spawn)
imports this module too, as `__mp_main__`.
"""

from suite.cli import main

if __name__ == "__main__":  # not in a spawned worker, which imports this module too
    main()
