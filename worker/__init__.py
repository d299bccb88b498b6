"""segd's GPU side, in subpackages by role.

    image/     decode, sampling, prediction, stitching, segmenter, outputs, pipeline
    video/     frames (files and folders), tracker, per-frame outputs, pipeline
    training/  datasets, the loop, evaluation, a run (train, validate, publish)
    models/    SAM2 loading (the only code that builds sam2) and official checkpoints
    service/   the RQ worker processes: the segment worker and the train worker
    jobs.py    the RQ entry points (`worker.jobs.segment`, `.segment_video`, `.train`)

Importing this package has no side effects and does not import torch.
"""

from common import __version__

__all__ = ["__version__"]
