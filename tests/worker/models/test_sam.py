"""worker.models.sam: building SAM2, loading checkpoints safely, encoding and decoding."""

import cv2
import numpy as np
import pytest
import torch

from common.errors import ModelError
from tests.conftest import tiny_config
from worker.image import prediction
from worker.models.sam import SamModel, save_official_checkpoint


class _Payload:
    """Pickles to a call that would create a file: a checkpoint carrying code."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        import os

        return (os.mkdir, (self.target,))


def test_random_weights_are_recorded_as_such(tiny_model, tmp_path):
    """checkpoint: random builds a reproducible model and every ModelInfo says so."""
    model = SamModel.load(tiny_config(tmp_path))
    assert model.info.random_weights is True and model.info.checkpoint == "random"
    assert model.info.name == "sam2.1_hiera_tiny" and model.info.image_size == 256
    assert model.feature_sizes == [(64, 64), (32, 32), (16, 16)]
    a = dict(model.sam.named_parameters())["sam_mask_decoder.iou_token.weight"]
    b = dict(tiny_model.sam.named_parameters())["sam_mask_decoder.iou_token.weight"]
    torch.testing.assert_close(a, b)  # the same "random" model in every process
    assert tiny_model.info.random_weights is False and len(tiny_model.info.checkpoint_sha256) == 64


def test_a_seed_tutorial_state_dict_loads(tiny_model, tmp_path):
    """A bare state dict saved by torch.save(model.state_dict()) (the seed's model.torch) loads."""
    path = tmp_path / "model.torch"
    torch.save(tiny_model.sam.state_dict(), path)
    model = SamModel.load(tiny_config(tmp_path, SEGD_MODEL__CHECKPOINT=str(path)))
    for name, value in tiny_model.sam.state_dict().items():
        torch.testing.assert_close(model.sam.state_dict()[name], value)


def test_a_checkpoint_of_another_size_fails_with_what_it_is(tmp_path):
    """A SAM2.1 small checkpoint configured as tiny: the error names both and the fix."""
    small = SamModel.load(tiny_config(tmp_path, SEGD_MODEL__SIZE="small"))
    path = save_official_checkpoint(small.sam, tmp_path / "small.pt")
    with pytest.raises(
        ModelError,
        match=r"does not match sam2\.1 tiny: .*tensors differ in shape|"
        r"does not match sam2\.1 tiny: .*missing",
    ) as info:
        SamModel.load(tiny_config(tmp_path, SEGD_MODEL__CHECKPOINT=str(path)))
    assert (
        "looks like a sam2.1 small checkpoint; set model.version: sam2.1 and model.size: small"
        in str(info.value)
    )


def test_a_sam2_checkpoint_configured_as_sam2_1_fails_with_the_fix(tmp_path):
    """SAM2 (2024-07) weights under a SAM2.1 config: missing keys, and the message says sam2."""
    old = SamModel.load(tiny_config(tmp_path, SEGD_MODEL__VERSION="sam2"))
    path = save_official_checkpoint(old.sam, tmp_path / "sam2_tiny.pt")
    with pytest.raises(
        ModelError, match=r"missing .*looks like a sam2 tiny checkpoint; set model\.version: sam2"
    ):
        SamModel.load(tiny_config(tmp_path, SEGD_MODEL__CHECKPOINT=str(path)))


def test_a_checkpoint_carrying_pickled_code_is_refused_and_the_code_never_runs(tmp_path):
    """The safe loader (weights_only=True) refuses pickled callables; nothing is executed."""
    target = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"model": _Payload(str(target))}, path)
    with pytest.raises(ModelError, match=r"evil\.pt: cannot be loaded with torch's safe loader"):
        SamModel.load(tiny_config(tmp_path, SEGD_MODEL__CHECKPOINT=str(path)))
    assert not target.exists()


def test_missing_and_unexpected_checkpoints_say_where_to_put_the_file(tmp_path):
    """No checkpoint yet: the message gives the fetch command and the exact path to place it."""
    with pytest.raises(ModelError) as info:
        SamModel.load(tiny_config(tmp_path, SEGD_MODEL__CHECKPOINT=""))
    message = str(info.value)
    assert "segd models fetch tiny --version sam2.1" in message
    assert str((tmp_path / "models" / "base" / "sam2.1_hiera_tiny.pt").resolve()) in message
    with pytest.raises(ModelError, match="no such file"):
        SamModel.load(tiny_config(tmp_path, SEGD_MODEL__CHECKPOINT=str(tmp_path / "nope.pt")))
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match="safe loader"):
        SamModel.load(tiny_config(tmp_path, SEGD_MODEL__CHECKPOINT=str(garbage)))


def test_a_wrong_checksum_is_refused(tiny_checkpoint, tmp_path):
    """model.checkpoint_sha256 set: a file with another digest does not load."""
    with pytest.raises(ModelError, match="differs from model.checkpoint_sha256"):
        SamModel.load(
            tiny_config(
                tmp_path,
                SEGD_MODEL__CHECKPOINT=str(tiny_checkpoint),
                SEGD_MODEL__CHECKPOINT_SHA256="0" * 64,
            )
        )


def test_decode_keeps_sam2s_best_mask_per_point_at_low_resolution(tiny_model, data_dir):
    """segd's batched decode equals SAM2ImagePredictor's own output for the same points,
    and propose keeps the highest predicted-IoU mask of the three.

    The image is already the model's input size, so neither transform resizes (segd resizes
    uint8 pixels, SAM2 floats: tests/worker/models/test_preprocess.py bounds that difference)."""
    from worker.image import decode

    image = decode.decode_image(decode.read_file(data_dir / "groceries.jpg", 2**30), 10**8)
    side = tiny_model.image_size
    image = np.ascontiguousarray(cv2.resize(image, (side, side), interpolation=cv2.INTER_AREA))
    points = np.array([[30, 30], [100, 75], [200, 12], [3, 250]], np.float32)
    features = tiny_model.encode([image])
    logits, iou = tiny_model.decode(features, 0, torch.from_numpy(points))
    assert logits.shape == (4, 3, 64, 64) and iou.shape == (4, 3)

    predictor = tiny_model.image_predictor()
    predictor.set_image(image)
    _, ref_iou, ref_low = predictor.predict(
        point_coords=points[:, None, :], point_labels=np.ones((4, 1)), multimask_output=True
    )
    np.testing.assert_allclose(iou.numpy(), ref_iou, atol=1e-5)
    np.testing.assert_allclose(logits.clamp(-32, 32).numpy(), ref_low, atol=1e-4)

    best = prediction.propose(
        tiny_model, features, 0, points, multimask=True, batch=3, threshold=0.0
    )
    rows = np.arange(4)
    np.testing.assert_allclose(best.scores.numpy(), ref_iou.max(1), atol=1e-5)
    np.testing.assert_allclose(
        best.logits.clamp(-32, 32).numpy(), ref_low[rows, ref_iou.argmax(1)], atol=1e-4
    )


def test_upsampling_only_kept_masks_matches_full_size_thresholding():
    """upsample_masks (chunked, straight to bool) equals interpolating everything and thresholding."""
    logits = torch.randn(11, 16, 16) * 4
    masks = prediction.upsample_masks(logits, (50, 70), threshold=0.0, chunk=4)
    full = torch.nn.functional.interpolate(
        logits[:, None], (50, 70), mode="bilinear", align_corners=False
    )
    assert masks.dtype == torch.bool
    torch.testing.assert_close(masks, full[:, 0] > 0)


@pytest.mark.gpu
def test_bfloat16_on_cuda_agrees_with_float32(tmp_path, tiny_checkpoint, data_dir):
    """On CUDA the default dtype is bfloat16 (autocast), and its masks agree with float32's."""
    from worker.image import decode

    image = decode.decode_image(decode.read_file(data_dir / "truck.jpg", 2**30), 10**8)
    env = {"SEGD_MODEL__CHECKPOINT": str(tiny_checkpoint), "SEGD_MODEL__DEVICE": "cuda"}
    bf16 = SamModel.load(tiny_config(tmp_path, **env))
    fp32 = SamModel.load(tiny_config(tmp_path, **env, SEGD_MODEL__DTYPE="float32"))
    assert bf16.dtype == torch.bfloat16 and bf16.device.type == "cuda"
    points = torch.tensor([[300.0, 400.0], [900.0, 700.0], [1500.0, 300.0]])
    a, _ = bf16.decode(bf16.encode([image]), 0, points)
    b, _ = fp32.decode(fp32.encode([image]), 0, points)
    agree = ((a > 0) == (b > 0)).float().mean().item()
    assert agree > 0.95
