"""`python -m worker ...` is the `segd` command (used by `segd up` to start its processes)."""

from worker.cli import main

main()
