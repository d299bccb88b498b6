"""`python -m worker ...`: the `segd` command under its older name (kept for hosts without the
console script, e.g. a bare GPU machine); `python -m segd` is the same."""

from segd.cli import main

main()
