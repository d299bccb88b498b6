"""`python -m bench [segment|service|train|video] [options]` (what `make bench` runs): each benchmark prints
its table. Without a name, all of them run with their defaults."""

import sys

from bench import bench_segment, bench_service, bench_train, bench_video

BENCHES = {
    "segment": bench_segment.main,
    "service": bench_service.main,
    "train": bench_train.main,
    "video": bench_video.main,
}

if __name__ == "__main__":
    args = sys.argv[1:]
    if args and args[0] in BENCHES:
        BENCHES[args[0]](args[1:])
    else:
        for bench in BENCHES.values():
            bench(args)
