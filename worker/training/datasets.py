"""Labelled folders for training: finding them, checking them, reading them.

Two layouts are understood:

    <dataset>/images/x.jpg  + <dataset>/labels/x.png   [+ <dataset>/val/images, val/labels]
    <dataset>/Simple/Train/Image/x.jpg + Simple/Train/Instance/x.png   [+ Simple/Test/...]  (LabPics)

Labels of the first layout are instance index PNGs (uint8 or uint16, one channel, 0 = background).
LabPics instance PNGs keep material ids in their blue channel and vessel ids in their red channel;
`merge_labpics` turns them into one index map without the seed tutorial's uint8 overflow.

Every pair is opened and decoded by `open_dataset` before training starts; all problems are
reported together, each with its file name. Dataset paths must resolve under the configured
datasets root (`training.datasets_root`), and so must every folder and file inside: a symlinked
`images/`, `val/`, LabPics subfolder or file that points outside the root is refused (named by
its place in the dataset, never by what lies outside), and an outside folder is never listed.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from common.errors import BadInput, SegdError
from common.names import IMAGE_SUFFIXES
from worker.image.decode import decode_image, read_file

FOLDERS, LABPICS = "folders", "labpics"
LABEL_SUFFIX = ".png"
MAX_REPORTED = 50  # problems listed one per line; the rest counted


class DatasetError(SegdError):
    """A dataset that cannot be trained on; `problems` names each bad file and why."""

    def __init__(self, dataset: str | os.PathLike, problems: list[str]):
        self.dataset = str(dataset)
        self.problems = problems
        shown = problems[:MAX_REPORTED]
        more = len(problems) - len(shown)
        text = f"{dataset}: {len(problems)} problem(s), nothing was trained:\n  " + "\n  ".join(
            shown
        )
        if more:
            text += f"\n  ... and {more} more"
        super().__init__(text)


@dataclass(frozen=True)
class Sample:
    """One labelled image: the image file and its instance label file."""

    image: Path
    label: Path
    layout: str  # FOLDERS | LABPICS

    @property
    def name(self) -> str:
        return self.image.stem


@dataclass
class Dataset:
    """A checked labelled folder split into training and validation samples."""

    root: Path
    layout: str
    train: list[Sample]
    val: list[Sample]
    val_source: str  # "val/", "Simple/Test" or "split <fraction>"
    instances: int  # instances over all samples
    fingerprint: str = field(default="")  # sha256 over every file's relative path and bytes

    @property
    def name(self) -> str:
        return self.root.name


def resolve(dataset: str, datasets_root: str | os.PathLike) -> Path:
    """The folder a job's `dataset` argument names, confined to `datasets_root`.

    `dataset` is absolute or relative to the root; symlinks are resolved before the check, so a
    link pointing outside the root is refused like a path that does.
    """
    root = Path(datasets_root).resolve()
    if not dataset or "\x00" in dataset:
        raise DatasetError(dataset or "''", ["the dataset name is empty or not a path"])
    candidate = Path(dataset).expanduser()
    path = (candidate if candidate.is_absolute() else root / candidate).resolve()
    if path != root and root not in path.parents:
        raise DatasetError(
            dataset,
            [f"is outside the datasets root {root} (training.datasets_root); refused"],
        )
    if not path.is_dir():
        raise DatasetError(dataset, [f"no such folder under {root} ({path})"])
    return path


def outside_root(path: Path, root: Path) -> bool:
    """True when `path`, with every symlink resolved, does not lie under `root` (resolved)."""
    try:
        real = path.resolve(strict=True)
    except (OSError, RuntimeError):  # missing, a link loop, a dangling link
        real = Path(os.path.realpath(path))
    return real != root and root not in real.parents


def _confined(path: Path, root: Path, problems: list[str]) -> bool:
    """False (with a problem naming `path`) when `path` resolves outside `root`."""
    if outside_root(path, root):
        problems.append(
            f"{path}: links outside the datasets root {root} (training.datasets_root); refused"
        )
        return False
    return True


def _files(folder: Path, suffixes: tuple[str, ...], root: Path, problems: list[str]) -> dict:
    """stem → file for the regular files in `folder` with one of `suffixes` (hidden files
    skipped); a file that links outside `root`, or is no regular file, is a problem instead."""
    found: dict[str, Path] = {}
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if entry.name.startswith(".") or not entry.name.lower().endswith(suffixes):
            continue
        path = Path(entry.path)
        if not _confined(path, root, problems):
            continue
        if not entry.is_file():  # follows a link, now known to stay inside the root
            problems.append(f"{path}: not a regular file")
            continue
        found[Path(entry.name).stem] = path
    return found


def _pairs(
    images_dir: Path, labels_dir: Path, layout: str, root: Path, problems: list[str]
) -> list[Sample]:
    """Pair images with labels by stem; a missing partner is a problem named by file. Folders
    and files must resolve under `root` (the datasets root)."""
    for folder in (images_dir, labels_dir):
        # Checked before anything is listed: an outside folder's file names are never shown.
        if not _confined(folder, root, problems):
            return []
        if not folder.is_dir():
            problems.append(f"{folder}: missing folder")
            return []
    images = _files(images_dir, IMAGE_SUFFIXES, root, problems)
    labels = _files(labels_dir, (LABEL_SUFFIX,), root, problems)
    samples = []
    for stem, image in images.items():
        label = labels.get(stem)
        if label is None:
            problems.append(f"{image}: no label {labels_dir / (stem + LABEL_SUFFIX)}")
        else:
            samples.append(Sample(image, label, layout))
    for stem, label in labels.items():
        if stem not in images:
            problems.append(f"{label}: a label without an image in {images_dir}")
    return samples


def merge_labpics(instance: np.ndarray) -> np.ndarray:
    """LabPics instance map (H, W, 3) uint8 RGB → (H, W) int32 instance ids, 0 = background.

    Materials (blue channel) keep their ids; vessels (red channel) are drawn where no material
    is, with ids shifted past the largest material id. Computed in int32, so ids above 127
    (whose sum or product overflows uint8 in the seed tutorial) never collide.
    """
    material = instance[..., 2].astype(np.int32)
    vessel = instance[..., 0].astype(np.int32)
    offset = int(material.max())
    return np.where(material > 0, material, np.where(vessel > 0, vessel + offset, 0)).astype(
        np.int32
    )


def read_label(sample: Sample, max_bytes: int, max_pixels: int) -> np.ndarray:
    """Decode a label file to (H, W) int32 instance ids; BadInput naming the file otherwise."""
    loaded = read_file(sample.label, max_bytes)
    try:
        with Image.open(io.BytesIO(loaded.data)) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise BadInput(sample.label, f"{width}x{height} pixels is over inputs.max_pixels")
            image.load()
            mode = image.mode
            array = np.asarray(image)
    except BadInput:
        raise
    except Exception as exc:
        raise BadInput(sample.label, f"not a readable PNG ({exc})") from None
    if sample.layout == LABPICS:
        if array.ndim != 3 or array.shape[2] < 3:
            raise BadInput(sample.label, f"a LabPics instance map must be RGB, got mode {mode}")
        return merge_labpics(array[..., :3])
    if array.ndim != 2 or mode not in ("L", "P", "I;16", "I;16B", "I;16L", "I"):
        raise BadInput(
            sample.label,
            f"labels must be one-channel instance index PNGs (uint8 or uint16), got mode {mode}",
        )
    if mode == "I" and (array.min() < 0 or array.max() > 65535):
        raise BadInput(sample.label, "instance ids must be between 0 and 65535")
    return array.astype(np.int32)


def read_sample(sample: Sample, max_bytes: int, max_pixels: int) -> tuple[np.ndarray, np.ndarray]:
    """(image (H, W, 3) uint8 RGB, label (H, W) int32); BadInput if they do not belong together."""
    image = decode_image(read_file(sample.image, max_bytes), max_pixels)
    label = read_label(sample, max_bytes, max_pixels)
    if label.shape != image.shape[:2]:
        raise BadInput(
            sample.label,
            f"the label is {label.shape[1]}x{label.shape[0]} but its image {sample.image.name} "
            f"is {image.shape[1]}x{image.shape[0]}; they must be the same size",
        )
    return image, label


def _layout(root: Path) -> str:
    if any(os.path.lexists(root / name) for name in ("images", "labels")):
        return FOLDERS
    if os.path.lexists(root / "Simple" / "Train"):
        return LABPICS
    raise DatasetError(
        root,
        [
            "not a labelled folder: expected images/ + labels/ (optionally val/images + "
            "val/labels) or LabPics' Simple/Train/Image + Simple/Train/Instance"
        ],
    )


def _fingerprint(root: Path, samples: list[Sample]) -> str:
    """sha256 over each file's path relative to the dataset and its bytes, in a fixed order."""
    digest = hashlib.sha256()
    for path in sorted({p for s in samples for p in (s.image, s.label)}):
        digest.update(str(path.relative_to(root)).encode() + b"\0")
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        digest.update(b"\0")
    return digest.hexdigest()


def _split(samples: list[Sample], fraction: float, seed: int) -> tuple[list, list]:
    """A deterministic split: the same files and seed always give the same validation set."""
    if len(samples) < 2:
        return samples, list(samples)  # one image: validate on it (an overfit check)
    keyed = sorted(
        samples,
        key=lambda s: hashlib.sha256(f"{seed}:{s.image.name}".encode()).hexdigest(),
    )
    count = min(len(samples) - 1, max(1, round(len(samples) * fraction)))
    val = sorted(keyed[:count], key=lambda s: s.image.name)
    train = sorted(keyed[count:], key=lambda s: s.image.name)
    return train, val


def find_samples(
    path: Path, datasets_root: str | os.PathLike | None = None
) -> tuple[str, list[Sample], list[Sample] | None, str, list[str]]:
    """(layout, train, val or None, val source, problems) of a labelled folder, without
    decoding anything. Every folder and file must resolve under `datasets_root` (default: the
    dataset folder itself); one that does not is a problem and is not listed."""
    root = Path(datasets_root if datasets_root is not None else path).resolve()
    if outside_root(path, root):
        raise DatasetError(
            path, [f"is outside the datasets root {root} (training.datasets_root); refused"]
        )
    layout = _layout(path)
    problems: list[str] = []
    if layout == FOLDERS:
        train = _pairs(path / "images", path / "labels", FOLDERS, root, problems)
        val_dir = path / "val"
        val = None
        if os.path.lexists(val_dir) and _confined(val_dir, root, problems):
            val = _pairs(val_dir / "images", val_dir / "labels", FOLDERS, root, problems)
        val_name = "val/"
    else:
        simple = path / "Simple"
        train, val = [], None
        if _confined(simple, root, problems):
            train_dir, test = simple / "Train", simple / "Test"
            if _confined(train_dir, root, problems):
                train = _pairs(train_dir / "Image", train_dir / "Instance", LABPICS, root, problems)
            if os.path.lexists(test) and _confined(test, root, problems):
                val = _pairs(test / "Image", test / "Instance", LABPICS, root, problems)
        val_name = "Simple/Test"

    return layout, train, val, val_name, problems


def refuse_outside_links(path: Path, datasets_root: str | os.PathLike) -> None:
    """DatasetError when any folder or file of the dataset links outside `datasets_root` (a
    quick check without decoding, for `segd train` before it enqueues)."""
    problems = [p for p in find_samples(path, datasets_root)[4] if "links outside" in p]
    if problems:
        raise DatasetError(path, problems)


def open_dataset(
    path: Path,
    *,
    val_fraction: float,
    seed: int,
    max_bytes: int,
    max_pixels: int,
    datasets_root: str | os.PathLike | None = None,
) -> Dataset:
    """Find, pair and check every file of a labelled folder.

    Raises DatasetError listing every missing label, unpaired label, undecodable or mis-sized
    file, every folder or file that resolves outside `datasets_root` (default: the dataset
    folder itself), and the case of a dataset without a single labelled instance.
    """
    layout, train, val, val_name, problems = find_samples(path, datasets_root)
    instances = 0
    for sample in train + (val or []):
        try:
            _, label = read_sample(sample, max_bytes, max_pixels)
        except BadInput as exc:
            problems.append(str(exc))
            continue
        instances += len(np.unique(label[label > 0]))
    if not train and not problems:
        problems.append("no labelled images found")
    if not problems and instances == 0:
        problems.append("every label is empty (all background): nothing to learn from")
    if problems:
        raise DatasetError(path, problems)

    if val is None:
        train, val = _split(train, val_fraction, seed)
        val_name = f"split {val_fraction:g}"
    elif not val:
        raise DatasetError(path, [f"{val_name} holds no labelled images"])
    return Dataset(
        root=path,
        layout=layout,
        train=train,
        val=val,
        val_source=val_name,
        instances=instances,
        fingerprint=_fingerprint(path, train + val),
    )


def safe_name(text: str) -> str:
    """A dataset name reduced to the characters model versions may hold."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-._")
    return name[:32] or "dataset"
