"""The watcher stays light: importing it (and the common package it shares) loads no torch."""

from __future__ import annotations

import subprocess
import sys


def test_import_watcher_loads_neither_torch_sam2_numpy_nor_the_gpu_side():
    """`import watcher.service` in a fresh interpreter leaves torch, sam2, numpy and worker unloaded."""
    probe = (
        "import sys, watcher.service, common.queues, common.config;"
        "print(sorted(m for m in ('torch', 'sam2', 'numpy', 'cv2', 'worker') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]", f"the watcher imported heavy modules: {out.strip()}"
