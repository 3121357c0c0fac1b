"""`python -m cats` runs the CLI, for environments where the console script is not on PATH."""

from cats.cli import main

main()
