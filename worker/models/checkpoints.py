"""Official SAM2 / SAM2.1 checkpoints: where they come from, where they live, how they are verified.

URLs are those of Meta's `checkpoints/download_ckpts.sh`. Meta publishes no checksums in that
script, so a fetched file is verified by (1) its length against the server's, (2) an expected
sha256 when one is known (`model.checkpoint_sha256`, or the `<file>.sha256` recorded when it was
first fetched), and (3) its structure: it must load with torch's safe loader and hold a SAM2
image encoder of the requested size. Imports torch only to do (3). Downloads resume only when
the server proves the file is unchanged (`download.py`: If-Range, Content-Range), and the sha256
of a resumed download is not recorded as the reference (only a fresh whole download's, or one
that matched `model.checkpoint_sha256`).
"""

from __future__ import annotations

import hashlib
import os
import re
import urllib.error
from collections.abc import Mapping
from pathlib import Path

from common.errors import FetchError
from worker.models import download

BASE_URLS = {
    "sam2": "https://dl.fbaipublicfiles.com/segment_anything_2/072824",
    "sam2.1": "https://dl.fbaipublicfiles.com/segment_anything_2/092824",
}
SIZES = ("tiny", "small", "base_plus", "large")
# Hiera trunk shape per size: (embedding dim, number of blocks); tells checkpoints apart.
HIERA_SHAPES = {"tiny": (96, 12), "small": (96, 16), "base_plus": (112, 24), "large": (144, 48)}
# Keys only SAM2.1 checkpoints have.
SAM21_ONLY_KEYS = ("no_obj_embed_spatial", "obj_ptr_tpos_proj.weight")

CHUNK_BYTES = 1 << 20


def official_filename(version: str, size: str) -> str:
    """`sam2.1`, `small` → `sam2.1_hiera_small.pt`."""
    prefix = "sam2.1_hiera" if version == "sam2.1" else "sam2_hiera"
    return f"{prefix}_{size}.pt"


def official_url(version: str, size: str, base_url: str | None = None) -> str:
    return f"{(base_url or BASE_URLS[version]).rstrip('/')}/{official_filename(version, size)}"


def base_dir(models_dir: str | os.PathLike) -> Path:
    """Where official checkpoints live: `<paths.models>/base/`."""
    return Path(models_dir) / "base"


def default_checkpoint_path(models_dir: str | os.PathLike, version: str, size: str) -> Path:
    return base_dir(models_dir) / official_filename(version, size)


def describe_state_dict(state: Mapping[str, object]) -> tuple[str | None, str | None]:
    """Guess (version, size) of a SAM2 state dict from its keys and tensor shapes; None if unknown."""
    patch = state.get("image_encoder.trunk.patch_embed.proj.weight")
    if patch is None or not hasattr(patch, "shape"):
        return None, None
    blocks = {
        int(m.group(1))
        for key in state
        if (m := re.match(r"image_encoder\.trunk\.blocks\.(\d+)\.", key))
    }
    shape = (int(patch.shape[0]), len(blocks))
    size = next((name for name, dims in HIERA_SHAPES.items() if dims == shape), None)
    version = "sam2.1" if any(key in state for key in SAM21_ONLY_KEYS) else "sam2"
    return version, size


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def recorded_sha256(path: str | os.PathLike) -> str | None:
    """The sha256 recorded beside a fetched checkpoint (`<file>.sha256`), if any."""
    sidecar = Path(f"{path}.sha256")
    try:
        return sidecar.read_text().split()[0]
    except (OSError, IndexError):
        return None


def offline_hint(version: str, size: str, dest: Path) -> str:
    return (
        f"download {official_url(version, size)} on a machine with internet access and place it "
        f"at {dest.resolve()} (or set model.checkpoint to its path; "
        f"SEGD_MODEL__CHECKPOINT=random runs with random weights)"
    )


def verify_structure(path: Path, version: str, size: str) -> None:
    """Load `path` with the safe loader and check it holds a SAM2 `version` `size` model."""
    import torch  # deferred: only verification needs it

    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:
        raise FetchError(f"{path}: not a loadable PyTorch checkpoint ({exc})") from None
    state = checkpoint.get("model", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, Mapping):
        raise FetchError(f"{path}: not a SAM2 checkpoint (no state dict inside)")
    found = describe_state_dict(state)
    if found != (version, size):
        raise FetchError(
            f"{path}: expected a {version} {size} checkpoint, found {found[0] or 'unknown'} "
            f"{found[1] or 'unknown size'}"
        )


def fetch(
    version: str,
    size: str,
    models_dir: str | os.PathLike,
    *,
    base_url: str | None = None,
    expected_sha256: str | None = None,
    progress: bool = True,
    timeout_s: float = 30.0,
) -> Path:
    """Download an official checkpoint into `<models_dir>/base/`, resuming a partial download.

    Returns the final path. Already present and verified: returns at once. Raises FetchError with
    the exact place to put the file by hand when the server cannot be reached.
    """
    if size not in SIZES or version not in BASE_URLS:
        raise FetchError(f"unknown model {version} {size}; sizes: {', '.join(SIZES)}")
    dest = default_checkpoint_path(models_dir, version, size)
    expected = expected_sha256 or recorded_sha256(dest)
    if dest.is_file():
        if expected and sha256_file(dest) != expected:
            raise FetchError(
                f"{dest}: sha256 differs from the expected {expected}; delete it to fetch again"
            )
        return dest

    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    url = official_url(version, size, base_url)
    try:
        resumed = download.download(
            url, part, timeout_s=timeout_s, progress=progress, desc=dest.name
        )
    except urllib.error.HTTPError as exc:
        raise FetchError(
            f"{url}: HTTP {exc.code} {exc.reason}; {offline_hint(version, size, dest)}"
        ) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise FetchError(
            f"cannot reach {url} ({reason}); {offline_hint(version, size, dest)}"
        ) from None

    digest = sha256_file(part)
    if expected and digest != expected:
        download.discard(part)
        raise FetchError(
            f"{url}: sha256 {digest} differs from the expected {expected}; the download was removed"
        )
    try:
        verify_structure(part, version, size)
    except FetchError:
        download.discard(part)
        raise
    os.replace(part, dest)
    download.meta_path(part).unlink(missing_ok=True)
    # The sidecar becomes the reference every later fetch checks against: only for bytes that
    # are known whole (an expected sha256 matched, or one fresh download, not a resumed one).
    if expected or not resumed:
        Path(f"{dest}.sha256").write_text(f"{digest}  {dest.name}\n")
    return dest
