"""Content-addressed job ids: the same input, mask and model give the same id.

Light (standard library only) so the watcher can compute ids before it enqueues.
"""

from __future__ import annotations

import hashlib


def job_id(image_sha256: str, mask_sha256: str | None, model_version: str) -> str:
    """A 32-hex-digit id from the input's bytes, the region mask's bytes and the model version.

    RQ allows only [A-Za-z0-9_-] in ids; hex digits are a safe subset.
    """
    digest = hashlib.sha256()
    for part in (image_sha256, mask_sha256 or "-", model_version):
        digest.update(part.encode())
        digest.update(b"\0")
    return digest.hexdigest()[:32]
