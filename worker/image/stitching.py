"""Score-ordered stitching of overlapping masks into one instance index map.

The rule is the seed tutorial's: visit masks from the highest score down; skip a mask when more
than `overlap_threshold` of it is already claimed, otherwise it claims its still-unclaimed pixels.
segd adds: masks are clipped to the region first, a mask that would claim fewer than `min_area`
pixels is dropped, and ids are contiguous from 1 in score order.

Vectorised: every pixel gets a signature, the set of masks that cover it (bit-packed into int64
words). Pixels with the same signature ("atoms") behave identically, so the sequential rule runs
over the few distinct atoms with their pixel counts, never over full-size arrays per mask; one
gather then paints the index map. All full-size work is torch on the masks' device.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

_BITS = 64


@dataclass
class Stitched:
    """index_map: (H, W) int32 on the masks' device, 0 = background, ids 1..n in score order;
    source: (n,) int64 numpy, the input mask index behind each id (id i ↔ source[i - 1]);
    areas: (n,) int64 numpy, pixels per id."""

    index_map: torch.Tensor
    source: np.ndarray
    areas: np.ndarray


def _signatures(flat: torch.Tensor) -> torch.Tensor:
    """(K, P) bool → (P, ceil(K/64)) int64: bit k of word k // 64 set where mask k covers the pixel."""
    count, pixels = flat.shape
    words = []
    shifts = torch.arange(8, dtype=torch.uint8, device=flat.device)[:, None]
    for w0 in range(0, count, _BITS):
        word = torch.zeros(pixels, dtype=torch.int64, device=flat.device)
        for b0 in range(w0, min(w0 + _BITS, count), 8):
            group = flat[b0 : b0 + 8].view(torch.uint8)  # bool → uint8 without a copy
            byte = (group << shifts[: group.shape[0]]).sum(dim=0, dtype=torch.uint8)
            word |= byte.to(torch.int64) << (b0 - w0)
        words.append(word)
    return torch.stack(words, dim=1)


def _atoms(signatures: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Group pixels by signature: (P, n_words) int64 → atom signatures (A, n_words), the (P,) atom
    of each pixel, and the (A,) pixel count of each atom.

    Uses only 1-D unique (60x faster than unique(dim=0) on CPU): with several words, each word's
    unique ids are folded into one compact key, word by word.
    """
    key = None
    for word in signatures.unbind(dim=1):
        _, word_ids = torch.unique(word, return_inverse=True)
        if key is not None:
            key = key * (int(word_ids.max()) + 1) + word_ids
            _, word_ids = torch.unique(key, return_inverse=True)
        key = word_ids
    _, inverse, counts = torch.unique(key, return_inverse=True, return_counts=True)
    first = torch.full(
        (len(counts),), signatures.shape[0], dtype=torch.int64, device=signatures.device
    )
    first.scatter_reduce_(
        0, inverse, torch.arange(signatures.shape[0], device=signatures.device), "amin"
    )
    return signatures[first], inverse, counts


def _membership(atoms: torch.Tensor, count: int) -> np.ndarray:
    """(A, n_words) int64 atom signatures → (A, K) bool numpy: which masks cover each atom."""
    bits = torch.arange(_BITS, dtype=torch.int64, device=atoms.device)
    member = ((atoms[:, :, None] >> bits) & 1).bool()  # (A, n_words, 64)
    return member.reshape(atoms.shape[0], -1)[:, :count].cpu().numpy()


def stitch(
    masks: torch.Tensor,
    scores: torch.Tensor,
    region: torch.Tensor | None = None,
    *,
    overlap_threshold: float = 0.15,
    min_area: int = 0,
) -> Stitched:
    """Stitch (K, H, W) bool masks with (K,) scores into an index map (see the module docstring).

    region: (H, W) bool or None (the whole image). Ties in score keep the input order.
    """
    count, height, width = masks.shape
    device = masks.device
    if count == 0:
        empty = np.zeros(0, np.int64)
        return Stitched(
            torch.zeros((height, width), dtype=torch.int32, device=device), empty, empty
        )
    order = torch.argsort(scores.float(), descending=True, stable=True)
    flat = masks[order].reshape(count, -1)
    if region is not None:
        flat &= region.reshape(1, -1)

    atoms, inverse, pixels = _atoms(_signatures(flat))
    del flat
    member = _membership(atoms, count)  # (A, K)
    pixel_counts = pixels.cpu().numpy()

    # The seed's sequential rule, over atoms instead of pixels.
    claimed = np.zeros(len(pixel_counts), dtype=bool)
    owner = np.zeros(len(pixel_counts), dtype=np.int32)
    source, areas = [], []
    for k in range(count):
        covers = member[:, k]
        area = int(pixel_counts[covers].sum())
        if area == 0:
            continue
        if pixel_counts[covers & claimed].sum() / area > overlap_threshold:
            continue
        take = covers & ~claimed
        taken = int(pixel_counts[take].sum())
        if taken == 0 or taken < min_area:
            continue
        source.append(int(order[k]))
        areas.append(taken)
        owner[take] = len(source)
        claimed |= take

    index_map = torch.from_numpy(owner).to(device)[inverse].reshape(height, width)
    return Stitched(index_map, np.array(source, np.int64), np.array(areas, np.int64))
