"""`python -m bench [segment|pipeline|service|train|video] [options]` (what `make bench` runs): each benchmark prints
its table. Without a name, all of them run with their defaults."""

import os
import sys

# Before torch loads its OpenMP runtime: libgomp's threads otherwise spin for a while after each
# parallel region, and on this 2-core machine the spinning thread slows the single-threaded
# numpy / Python work between torch's ops 3-30x (measured: the stand-in pipeline's sampling 0.25 s
# instead of 0.02 s). OMP_WAIT_POLICY=ACTIVE (or any value set outside) is respected.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from bench import bench_pipeline, bench_segment, bench_service, bench_train, bench_video

BENCHES = {
    "segment": bench_segment.main,
    "pipeline": bench_pipeline.main,
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
