"""worker.models.preprocess: the model input, resized as uint8 before it becomes float."""

import warnings

import numpy as np
import pytest
import torch

from worker.models.preprocess import MEAN, STD, preprocess_images


def _sam2_transform(image: np.ndarray, size: int) -> torch.Tensor:
    """SAM2's own inference transform (float first, then resize, then normalise)."""
    from sam2.utils.transforms import SAM2Transforms

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return SAM2Transforms(resolution=size, mask_threshold=0.0)(image)


def _photo(hw, seed=0) -> np.ndarray:
    """A smooth random photo-like (H, W, 3) uint8 image."""
    import cv2

    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (hw[0] // 16 + 1, hw[1] // 16 + 1, 3), dtype=np.uint8)
    return np.ascontiguousarray(cv2.resize(small, (hw[1], hw[0]), interpolation=cv2.INTER_CUBIC))


@pytest.mark.parametrize("hw", [(300, 400), (1000, 750), (256, 256), (97, 1301)])
def test_input_differs_from_sam2s_transform_by_at_most_one_grey_level(hw):
    """Resizing uint8 first changes each input value by the rounding of one pixel (<= 1 level of
    255, in normalised units 1 / (255 std)); the mean difference is a fraction of that."""
    image = _photo(hw)
    ours = preprocess_images([image], 256, torch.device("cpu"))[0]
    theirs = _sam2_transform(image, 256)
    assert ours.shape == theirs.shape == (3, 256, 256) and ours.dtype == torch.float32
    levels = (ours - theirs).abs() * torch.tensor(STD).view(3, 1, 1) * 255
    assert levels.max().item() <= 1.01
    assert levels.mean().item() < 0.3


def test_an_image_at_the_input_size_is_only_normalised():
    """No resize when the image is already S x S: exactly (x / 255 - mean) / std, in float32."""
    image = _photo((64, 64), seed=1)
    ours = preprocess_images([image, image], 64, torch.device("cpu"))
    x = torch.from_numpy(image).permute(2, 0, 1).float() / 255
    expected = (x - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)
    assert ours.shape == (2, 3, 64, 64)
    torch.testing.assert_close(ours[1], expected, atol=1e-6, rtol=0)


@pytest.mark.gpu
def test_preprocessing_on_cuda_matches_sam2s_float_transform():
    """On CUDA the uint8 image is uploaded and resized in float32 on the device: SAM2's
    arithmetic, within float rounding."""
    image = _photo((1000, 750))
    ours = preprocess_images([image], 256, torch.device("cuda"))[0]
    assert ours.device.type == "cuda"
    torch.testing.assert_close(ours.cpu(), _sam2_transform(image, 256), atol=1e-4, rtol=0)


@pytest.mark.parametrize("hw", [(768, 1024), (300, 400), (64, 64), (97, 1301)])
def test_cpu_normalise_is_the_float_formula_bit_for_bit(hw):
    """The numpy normalise gives exactly `x.float() * scale - offset` of the resized uint8
    image (the previous torch formula), for resized and already-square inputs alike."""
    from worker.models.preprocess import _resize_cpu, _scale_offset

    size = 64 if hw == (64, 64) else 256
    images = [_photo(hw, seed=2), _photo(hw, seed=3)]
    ours = preprocess_images(images, size, torch.device("cpu"))
    scale, offset = _scale_offset(torch.device("cpu"))
    batch = torch.cat([_resize_cpu(image, size) for image in images])
    expected = (batch.float() * scale - offset).contiguous()
    assert ours.dtype == torch.float32 and ours.is_contiguous()
    assert torch.equal(ours, expected)
