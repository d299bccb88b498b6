"""`python -m bench` (what `make bench` runs): every benchmark, each printing its table."""

import sys

from bench import bench_segment

if __name__ == "__main__":
    bench_segment.main(sys.argv[1:])
