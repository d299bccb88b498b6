"""SAM2 loading and the two forward passes segd needs. The only module that imports sam2.

`SamModel.load(config)` builds the configured SAM2 / SAM2.1 model (any of the four sizes, at any
`model.image_size`), loads an official checkpoint or a seed-tutorial state dict with torch's safe
loader (or keeps random weights), and moves it to the device. Then:

    features = model.encode([image])                 # image (H, W, 3) uint8 RGB; encoder runs once
    logits, iou = model.decode(features, 0, points_xy)  # points (N, 2) float xy pixels → low-res masks

Low-resolution masks are (N, M, S/4, S/4) float32 logits over the whole image stretched to the
model's square input (S = image_size), M = 3 with multimask output, else 1.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.config import Config, ModelConfig
from common.errors import ModelError
from worker.models import checkpoints
from worker.models.devices import resolve_device, resolve_dtype
from worker.models.preprocess import preprocess_images

# A built SAM2 model (sam2.modeling.sam2_base.SAM2Base, an nn.Module): sam2 ships no type
# information, and nn.Module's attribute typing cannot see its submodules.
Sam2Module = Any

# The hydra config (inside the sam2 package) for each (version, size).
CONFIG_FILES = {
    ("sam2", "tiny"): "configs/sam2/sam2_hiera_t.yaml",
    ("sam2", "small"): "configs/sam2/sam2_hiera_s.yaml",
    ("sam2", "base_plus"): "configs/sam2/sam2_hiera_b+.yaml",
    ("sam2", "large"): "configs/sam2/sam2_hiera_l.yaml",
    ("sam2.1", "tiny"): "configs/sam2.1/sam2.1_hiera_t.yaml",
    ("sam2.1", "small"): "configs/sam2.1/sam2.1_hiera_s.yaml",
    ("sam2.1", "base_plus"): "configs/sam2.1/sam2.1_hiera_b+.yaml",
    ("sam2.1", "large"): "configs/sam2.1/sam2.1_hiera_l.yaml",
}
RANDOM = "random"
RANDOM_SEED = 0  # random weights are reproducible: the same "random" model in every process


@dataclass(frozen=True)
class ModelInfo:
    """What a result was made with; written into every manifest."""

    name: str  # e.g. "sam2.1_hiera_small"
    version: str  # "sam2" | "sam2.1"
    size: str
    checkpoint: str  # a path, or "random"
    checkpoint_sha256: str | None
    random_weights: bool
    image_size: int
    device: str
    dtype: str
    model_version: str  # the registry version ("base" for an official or hand-placed checkpoint)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class ImageFeatures:
    """Encoder output for a batch of B images.

    image_embed: (B, 256, S/16, S/16); high_res: ((B, 32, S/4, S/4), (B, 64, S/8, S/8));
    dtype follows autocast. image_hw: the original (H, W) of each image.
    """

    image_embed: torch.Tensor
    high_res: tuple[torch.Tensor, torch.Tensor]
    image_hw: list[tuple[int, int]]


def _resolve_checkpoint(cfg: ModelConfig, models_dir: Path) -> Path | None:
    """The checkpoint file to load, or None for random weights; ModelError if it is missing."""
    if cfg.checkpoint == RANDOM:
        return None
    if cfg.checkpoint is None:
        path = checkpoints.default_checkpoint_path(models_dir, cfg.version, cfg.size)
        if not path.is_file():
            raise ModelError(
                f"no checkpoint for {cfg.version} {cfg.size} at {path}: run "
                f"`segd models fetch {cfg.size} --version {cfg.version}`, or "
                + checkpoints.offline_hint(cfg.version, cfg.size, path)
            )
        return path
    path = Path(cfg.checkpoint).expanduser()
    if not path.is_absolute():
        path = (models_dir / path) if (models_dir / path).is_file() else path.resolve()
    if not path.is_file():
        raise ModelError(f"model.checkpoint = {cfg.checkpoint!r}: no such file ({path})")
    return path


def load_state_dict(path: Path) -> Mapping[str, torch.Tensor]:
    """Read an official checkpoint ({"model": state_dict}) or a bare state dict, safely.

    Uses `torch.load(weights_only=True)`: a file that needs pickled code is refused.
    """
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:
        raise ModelError(
            f"{path}: cannot be loaded with torch's safe loader (weights_only=True): "
            f"{str(exc).splitlines()[0]}"
        ) from None
    if isinstance(checkpoint, Mapping) and isinstance(checkpoint.get("model"), Mapping):
        checkpoint = checkpoint["model"]  # the official format
    if not isinstance(checkpoint, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in checkpoint.items()
    ):
        raise ModelError(f"{path}: not a SAM2 checkpoint (expected a state dict of tensors)")
    return checkpoint


def _check_fits(
    model: torch.nn.Module, state: Mapping[str, torch.Tensor], path: Path, cfg: ModelConfig
) -> None:
    """Raise a ModelError that says what the checkpoint is when it does not fit the model."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    reshaped = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if not (missing or unexpected or reshaped):
        return
    version, size = checkpoints.describe_state_dict(state)
    if size is not None:
        found = f"it looks like a {version} {size} checkpoint"
        fix = f"; set model.version: {version} and model.size: {size}"
    else:
        found, fix = "it is not a SAM2 checkpoint segd recognises", ""
    details = []
    if reshaped:
        k = reshaped[0]
        details.append(
            f"{len(reshaped)} tensors differ in shape (e.g. {k}: {tuple(state[k].shape)} vs {tuple(expected[k].shape)})"
        )
    if missing:
        details.append(f"{len(missing)} missing (e.g. {missing[0]})")
    if unexpected:
        details.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
    raise ModelError(
        f"{path} does not match {cfg.version} {cfg.size}: {'; '.join(details)}; {found}{fix}"
    )


def build_sam2_model(cfg: ModelConfig, state: Mapping[str, torch.Tensor] | None) -> Sam2Module:
    """Build the SAM2 module for `cfg` on the CPU, at `cfg.image_size`, with `state` or random weights."""
    from sam2.build_sam import build_sam2  # deferred: importing sam2 initialises hydra

    overrides = [f"++model.image_size={cfg.image_size}"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_SEED)
        model = build_sam2(
            CONFIG_FILES[(cfg.version, cfg.size)],
            None,
            device="cpu",
            mode="eval",
            hydra_overrides_extra=overrides,
        )
    if state is not None:
        model.load_state_dict(state, strict=True)
    return model


class SamModel:
    """A SAM2 model held on one device, with segd's encode and decode passes."""

    def __init__(
        self,
        sam: Sam2Module,
        info: ModelInfo,
        device: torch.device,
        dtype: torch.dtype,
        decoder_batch: int | None = None,
    ):
        self.sam = sam
        self.info = info
        self.device = device
        self.dtype = dtype
        self.image_size = int(sam.image_size)
        # Prompts per decoder call: as configured, else 4 on CPU (cache-sized) / 64 on CUDA.
        self.decoder_batch = decoder_batch or (64 if device.type == "cuda" else 4)
        stride = self.image_size // 4
        # SAM2ImagePredictor hard-codes these for 1024 px; derive them from the image size.
        self.feature_sizes = [
            (stride, stride),
            (stride // 2, stride // 2),
            (stride // 4, stride // 4),
        ]

    @classmethod
    def load(cls, config: Config, model_version: str = "base") -> SamModel:
        """Build the configured model, load its checkpoint safely, move it to the device."""
        cfg = config.model
        device = resolve_device(cfg.device)
        dtype = resolve_dtype(cfg.dtype, device)
        path = _resolve_checkpoint(cfg, Path(config.paths.models))
        sha256 = None
        if path is None:
            state = None
        else:
            sha256 = checkpoints.sha256_file(path)
            if cfg.checkpoint_sha256 and sha256 != cfg.checkpoint_sha256:
                raise ModelError(
                    f"{path}: sha256 {sha256} differs from model.checkpoint_sha256 {cfg.checkpoint_sha256}"
                )
            state = load_state_dict(path)
        sam = build_sam2_model(cfg, None)
        if state is not None and path is not None:
            _check_fits(sam, state, path, cfg)
            sam.load_state_dict(state, strict=True)
        sam = sam.to(device).eval()
        info = ModelInfo(
            name=checkpoints.official_filename(cfg.version, cfg.size).removesuffix(".pt"),
            version=cfg.version,
            size=cfg.size,
            checkpoint=str(path) if path is not None else RANDOM,
            checkpoint_sha256=sha256,
            random_weights=path is None,
            image_size=cfg.image_size,
            device=str(device),
            dtype=str(dtype).removeprefix("torch."),
            model_version=model_version,
        )
        return cls(sam, info, device, dtype, decoder_batch=cfg.decoder_batch)

    @classmethod
    def load_version(cls, config: Config, version: str) -> SamModel:
        """Load a registry version: "base" (the configured checkpoint) or a fine-tuned one."""
        from common import registry

        if version != registry.BASE:
            weights = registry.weights_path(config.paths.models, version)
            config = config.model_copy(
                update={"model": config.model.model_copy(update={"checkpoint": str(weights)})}
            )
        return cls.load(config, model_version=version)

    def autocast(self):
        """The autocast context for this model's device and dtype (a no-op for float32)."""
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def low_res_hw(self, image_hw: tuple[int, int]) -> tuple[int, int]:
        """The (h, w) of decoded masks: S/4 square whatever the image size."""
        return self.feature_sizes[0]

    @torch.inference_mode()
    def encode(
        self, images: Sequence[np.ndarray], batch: torch.Tensor | None = None
    ) -> ImageFeatures:
        """Run the image encoder once on a batch of (H, W, 3) uint8 RGB images. `batch`: their
        `preprocess(images)`, when it was made already (the worker's decode-ahead)."""
        if batch is None:
            batch = self.preprocess(images)
        with self.autocast():
            image_embed, high_res = self.backbone_features(batch)
        return ImageFeatures(
            image_embed=image_embed,
            high_res=high_res,
            image_hw=[tuple(image.shape[:2]) for image in images],
        )

    def preprocess(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """(H, W, 3) uint8 RGB images → (B, 3, S, S) float32 normalised, on the device.

        SAM2's inference transform (antialiased resize to the model's square input, ImageNet
        mean/std), resized before it becomes float (worker.models.preprocess); training uses it
        too, so training sees what the service sees.
        """
        return preprocess_images(images, self.image_size, self.device)

    def backbone_features(
        self, batch: torch.Tensor
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """The image encoder on a (B, 3, S, S) batch; no grad mode of its own (training uses it).

        Returns image_embed (B, 256, S/16, S/16) and high-res features ((B, 32, S/4, S/4),
        (B, 64, S/8, S/8)): row b of each belongs to image b and to no other.
        """
        backbone_out = self.sam.forward_image(batch)
        _, vision_feats, _, _ = self.sam._prepare_backbone_features(backbone_out)
        if self.sam.directly_add_no_mem_embed:
            vision_feats[-1] = vision_feats[-1] + self.sam.no_mem_embed
        batch_size = batch.shape[0]
        feats = [
            feat.permute(1, 2, 0).reshape(batch_size, -1, *size)
            for feat, size in zip(vision_feats[::-1], self.feature_sizes[::-1], strict=True)
        ][::-1]
        return feats[-1], (feats[0], feats[1])

    @torch.inference_mode()
    def decode(
        self, features: ImageFeatures, index: int, points_xy: torch.Tensor, multimask: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode one positive point per prompt against image `index` of `features`.

        points_xy: (N, 2) float xy in the image's pixels. Returns low-res mask logits
        (N, M, S/4, S/4) float32 and predicted IoU (N, M) float32; M = 3 if multimask else 1.
        All N prompts go through the decoder in one call.
        """
        height, width = features.image_hw[index]
        scale = torch.tensor(
            [self.image_size / width, self.image_size / height], device=self.device
        )
        coords = (points_xy.to(self.device, torch.float32) * scale)[:, None, :]  # (N, 1, 2)
        labels = torch.ones(coords.shape[:2], dtype=torch.int, device=self.device)
        with self.autocast():
            sparse, dense = self.sam.sam_prompt_encoder(
                points=(coords, labels), boxes=None, masks=None
            )
            logits, iou, _, _ = self.sam.sam_mask_decoder(
                image_embeddings=features.image_embed[index : index + 1],
                image_pe=self.sam.sam_prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=multimask,
                repeat_image=coords.shape[0] > 1,
                high_res_features=[level[index : index + 1] for level in features.high_res],
            )
        return logits.float(), iou.float()

    def image_predictor(self):
        """SAM2's own SAM2ImagePredictor around this model (for comparisons), sized correctly."""
        from sam2.sam2_image_predictor import SAM2ImagePredictor

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            predictor = SAM2ImagePredictor(self.sam)
        predictor._bb_feat_sizes = list(self.feature_sizes)
        return predictor

    def video_predictor(self):
        """SAM2's SAM2VideoPredictor (`build_sam2_video_predictor`'s settings) on this model's
        device, sharing this model's weight tensors (no second copy of the weights)."""
        from sam2.build_sam import build_sam2_video_predictor

        cfg = self.info
        with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            torch.manual_seed(RANDOM_SEED)
            predictor = build_sam2_video_predictor(
                CONFIG_FILES[(cfg.version, cfg.size)],
                None,
                device="cpu",
                mode="eval",
                hydra_overrides_extra=[f"++model.image_size={self.image_size}"],
            )
        # assign=True makes the predictor's parameters the very tensors of the image model.
        predictor.load_state_dict(self.sam.state_dict(), strict=True, assign=True)
        return predictor.to(self.device).eval()


def save_official_checkpoint(model: torch.nn.Module, path: str | os.PathLike) -> Path:
    """Save a model's weights in the official checkpoint format ({"model": state_dict})."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model.state_dict()}, path)
    return path
