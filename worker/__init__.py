"""segd's GPU side: config, model, sampling, prediction, stitching, outputs.

Importing this package has no side effects and does not import torch; the heavy modules
(`worker.model`, `worker.prediction`, `worker.stitching`, ...) load it when imported themselves.
"""

__version__ = "0.1.0"
