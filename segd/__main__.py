"""`python -m segd ...` is the `segd` command (used by `segd up` to start its processes)."""

from segd.cli import main

main()
