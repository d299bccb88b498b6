"""The model's input transform: (H, W, 3) uint8 RGB images → (B, 3, S, S) normalised float32.

SAM2's own transform (`SAM2Transforms`) converts the full image to float first, then resizes it
(bilinear, antialiased) and normalises with the ImageNet mean/std: at 12 MP that is 144 MB of
float32 made and read twice. Here the image is resized first, as uint8, with the same
antialiased bilinear filter (torch's uint8 kernel, integer arithmetic), and only the S x S result
becomes float. The result differs from SAM2Transforms' by the rounding of the resized pixels to
uint8 (at most one grey level, see tests/worker/models/test_preprocess.py).

On CUDA the uint8 image is uploaded as it is (a quarter of the float32 bytes) and resized in
float32 on the device: SAM2's arithmetic, on the GPU.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def _scale_offset(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(1, 3, 1, 1) float32 a, b with (x / 255 - mean) / std = x * a - b."""
    std = torch.tensor(STD, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    mean = torch.tensor(MEAN, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    return 1.0 / (255.0 * std), mean / std


def _resize_cpu(image: np.ndarray, size: int) -> torch.Tensor:
    """(H, W, 3) uint8 → (1, 3, S, S) uint8, antialiased bilinear (channels-last kernel)."""
    pixels = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None]
    if pixels.shape[-2:] == (size, size):
        return pixels
    return F.interpolate(
        pixels, size=(size, size), mode="bilinear", antialias=True, align_corners=False
    )


def _resize_cuda(image: np.ndarray, size: int, device: torch.device) -> torch.Tensor:
    """(H, W, 3) uint8 → (1, 3, S, S) float32 in 0..255 on the device."""
    pixels = torch.from_numpy(np.ascontiguousarray(image)).to(device, non_blocking=True)
    pixels = pixels.permute(2, 0, 1)[None].float()
    if pixels.shape[-2:] == (size, size):
        return pixels
    return F.interpolate(
        pixels, size=(size, size), mode="bilinear", antialias=True, align_corners=False
    )


def preprocess_images(
    images: Sequence[np.ndarray], size: int, device: torch.device
) -> torch.Tensor:
    """(H, W, 3) uint8 RGB images (any sizes) → (B, 3, S, S) float32 normalised, on `device`."""
    scale, offset = _scale_offset(device)
    if device.type == "cuda":
        batch = torch.cat([_resize_cuda(image, size, device) for image in images])
        return (batch.float() * scale - offset).contiguous()
    return _normalise_cpu([_resize_cpu(image, size) for image in images], scale, offset).to(device)


def _normalise_cpu(
    resized: Sequence[torch.Tensor], scale: torch.Tensor, offset: torch.Tensor
) -> torch.Tensor:
    """(1, 3, S, S) uint8 images → (B, 3, S, S) float32 x * a - b, channel by channel in numpy.

    The same float32 arithmetic as `x.float() * scale - offset` (each uint8 cast to float32, one
    rounded product, one rounded difference), bit for bit (tested), in two cache-friendly passes
    per channel: torch's uint8 → float product with a broadcast (1, 3, 1, 1) factor runs at a
    third of numpy's speed on this CPU.
    """
    a, b = scale.flatten().cpu().numpy(), offset.flatten().cpu().numpy()
    size = resized[0].shape[-1]
    out = np.empty((len(resized), 3, size, size), np.float32)
    for i, pixels in enumerate(resized):
        channels = np.ascontiguousarray(pixels[0].numpy())
        for c in range(3):
            np.multiply(channels[c], a[c], out=out[i, c], dtype=np.float32)
            np.subtract(out[i, c], b[c], out=out[i, c])
    return torch.from_numpy(out)
