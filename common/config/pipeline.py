"""Config sections of the model and what runs on it: the image pipeline, video and training."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from common.config.base import Section

ModelVersion = Literal["sam2", "sam2.1"]
ModelSize = Literal["tiny", "small", "base_plus", "large"]


class ModelConfig(Section):
    version: ModelVersion = Field(default="sam2.1", description="SAM2 generation: sam2 or sam2.1.")
    size: ModelSize = Field(
        default="small", description="Model size: tiny, small, base_plus or large."
    )
    checkpoint: str | None = Field(
        default=None,
        description='None: the official file under paths.models/base/ (see `segd models fetch`); a path: an official checkpoint or a seed-tutorial state dict; "random": random weights.',
    )
    download_url: str | None = Field(
        default=None,
        description="A mirror of Meta's checkpoint folder for `segd models fetch` and the first start of `segd up` (e.g. an internal file server); None = Meta's own URLs.",
    )
    checkpoint_sha256: str | None = Field(
        default=None,
        pattern=r"^[0-9a-f]{64}$",
        description="Expected sha256 of the checkpoint file; checked when set.",
    )
    image_size: int = Field(
        default=1024,
        ge=128,
        le=4096,
        multiple_of=32,
        description="The model's square input resolution in pixels (tests use 256).",
    )
    device: str = Field(
        default="auto",
        description="auto (the first visible CUDA device, else the CPU), cpu, cuda or cuda:N.",
    )
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        default="auto",
        description="auto: bfloat16 on CUDA (float16 where bf16 is unsupported), float32 on the CPU.",
    )
    multimask: bool = Field(
        default=True,
        description="True: keep the best-scoring of SAM2's three masks per point; False: its single-mask output.",
    )
    mask_threshold: float = Field(
        default=0.0, description="Logit threshold that turns a mask into pixels."
    )
    decoder_batch: int | None = Field(
        default=None,
        ge=1,
        le=4096,
        description="Prompts per decoder call. None = auto: 4 on CPU (each prompt carries ~12 MB of activations; small batches stay in cache and decode 1.7x faster, same results), 64 on CUDA.",
    )

    @field_validator("device")
    @classmethod
    def _device(cls, device: str) -> str:
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", device):
            raise ValueError("must be auto, cpu, cuda or cuda:N")
        return device


class InputsConfig(Section):
    max_pixels: int = Field(
        default=64_000_000,
        ge=1,
        description="Decompression-bomb cap: images (and masks) above this many pixels are refused.",
    )
    max_file_bytes: int = Field(
        default=512 * 2**20, ge=1, description="Image and mask files larger than this are refused."
    )


class SamplingConfig(Section):
    mode: Literal["random", "grid", "coverage"] = Field(
        default="coverage",
        description="random: uniform points in the region (seeded, no repeats); grid: an even lattice clipped to the region; coverage: decode in small batches and put new points where nothing is covered yet.",
    )
    points: int = Field(
        default=30,
        ge=1,
        le=4096,
        description="Points per image (random, grid) or the point budget (coverage).",
    )
    seed: int = Field(
        default=0, description="The same seed gives the same points and the same map."
    )
    coverage_target: float = Field(
        default=0.95,
        gt=0.0,
        le=1.0,
        description="coverage mode stops once this fraction of the region is covered by accepted masks.",
    )
    batch: int = Field(
        default=4, ge=1, le=1024, description="coverage mode: prompts decoded per round."
    )
    min_gain: float = Field(
        default=0.01,
        ge=0.0,
        le=1.0,
        description="coverage mode also stops when a round (whose prompts all lie in uncovered spots) adds less than this fraction of the region: the model finds nothing more there. 0 disables.",
    )


class StitchingConfig(Section):
    overlap_threshold: float = Field(
        default=0.15,
        ge=0.0,
        le=1.0,
        description="A mask is skipped when more than this fraction of it is already claimed (the seed's rule).",
    )
    min_score: float = Field(
        default=0.0,
        ge=0.0,
        le=1.0,
        description="Masks whose predicted IoU is below this are dropped before stitching.",
    )
    min_stability: float = Field(
        default=0.0,
        ge=0.0,
        le=1.0,
        description="Masks whose stability score is below this are dropped before stitching.",
    )
    min_area: int = Field(
        default=16,
        ge=0,
        description="Segments that would claim fewer pixels than this are dropped.",
    )


class OutputsConfig(Section):
    overlay_alpha: float = Field(
        default=0.5, ge=0.0, le=1.0, description="Opacity of the colours in overlay.jpg."
    )
    jpeg_quality: int = Field(default=90, ge=1, le=100, description="JPEG quality of overlay.jpg.")
    png_compression: int = Field(
        default=1,
        ge=0,
        le=9,
        description="0 (none, fastest) .. 9 (smallest); 1 is nearly as small as 9 for label maps.",
    )


class VideoConfig(Section):
    max_frames: int | None = Field(
        default=None,
        ge=1,
        description="Only the first N frames of each video are segmented and tracked (None: all of them).",
    )
    reseed_every: int = Field(
        default=30,
        ge=0,
        description="Every K frames, sample points where no tracked object is and add what they find as new objects with new ids (0: only the first frame's objects are tracked).",
    )
    max_objects: int = Field(
        default=100,
        ge=1,
        le=65535,
        description="No new objects are added once this many are tracked (each costs time on every frame).",
    )
    offload_state_to_cpu: bool = Field(
        default=True,
        description="Tracker state (memories, masks) lives in CPU memory on CUDA hosts: GPU memory stays flat.",
    )
    folder_fps: float = Field(
        default=25.0,
        gt=0,
        description="Frame rate of color.mp4 for a folder of frames (video files keep their own).",
    )
    max_file_bytes: int = Field(
        default=16 * 2**30,
        ge=1,
        description="Video files larger than this are refused (frames are still limited by inputs.max_pixels).",
    )
    job_timeout_s: int = Field(
        default=14400,
        ge=10,
        description="RQ timeout of a video job: above the longest video's runtime. A worker's stop timeout (`segd up`, the systemd unit) is the largest job timeout it serves + a margin.",
    )


class TrainingConfig(Section):
    datasets_root: Path = Field(
        default=Path("datasets"),
        description="Labelled folders (`images/` + `labels/` [+ `val/`], or LabPics' `Simple/Train/...`) must lie under this folder; a dataset named by a relative path is looked up here.",
    )
    base: str = Field(
        default="current",
        description='The model a run starts from: "current" (what the workers use), "base", or a version name.',
    )
    # Upper bounds: a queued job's JSON may carry any number (RQ's parser even reads Infinity);
    # these keep a run within what one GPU can hold and what can still learn something.
    steps: int = Field(default=1000, ge=1, le=10**7, description="Optimiser steps of a run.")
    batch_images: int = Field(
        default=4, ge=1, le=64, description="images per step, each with its own features"
    )
    instances_per_image: int = Field(
        default=8, ge=1, le=256, description="Instances prompted per image and step."
    )
    points_per_instance: int = Field(
        default=1, ge=1, le=64, description="positive points per prompt (service: 1)"
    )
    negative_points: int = Field(
        default=0, ge=0, le=64, description="background points added to each prompt"
    )
    box_probability: float = Field(
        default=0.0,
        ge=0,
        le=1,
        allow_inf_nan=False,
        description="share of prompts that get a box",
    )
    train_encoder: bool = Field(
        default=False, description="also fine-tune the image encoder (more memory, slower)"
    )
    lr: float = Field(
        default=1e-4,
        gt=0,
        le=1,
        allow_inf_nan=False,
        description="prompt encoder and mask decoder",
    )
    encoder_lr: float = Field(
        default=1e-5,
        gt=0,
        le=1,
        allow_inf_nan=False,
        description="Learning rate of the image encoder (training.train_encoder only).",
    )
    weight_decay: float = Field(
        default=0.01, ge=0, le=1, allow_inf_nan=False, description="AdamW weight decay."
    )
    warmup_steps: int = Field(
        default=50, ge=0, le=10**7, description="linear warm-up, then cosine decay to 0"
    )
    grad_clip: float = Field(
        default=1.0,
        gt=0,
        le=1e3,
        allow_inf_nan=False,
        description="max global gradient norm",
    )
    val_every: int = Field(default=100, ge=1, le=10**7, description="steps between validations")
    val_fraction: float = Field(
        default=0.2, gt=0, lt=1, allow_inf_nan=False, description="held out when there is no val/"
    )
    val_max_images: int = Field(
        default=100, ge=1, le=100_000, description="At most this many validation images are scored."
    )
    patience: int = Field(
        default=5,
        ge=0,
        le=100_000,
        description="validations without improvement; 0 = never stop early",
    )
    checkpoint_every: int = Field(
        default=50, ge=1, le=10**7, description="steps between resumable checkpoints"
    )
    seed: int = Field(
        default=0, ge=0, lt=2**32, description="The same seed gives the same run (0 .. 2**32-1)."
    )
    promote: Literal["if_better", "always", "never"] = Field(
        default="if_better",
        description="Make the new version current: if it beats the current model on the run's validation set, always, or never (then `segd models promote VERSION`). A queued job may ask for `always` only when training.allow_job_promote is true.",
    )
    allow_job_promote: bool = Field(
        default=False,
        description="Whether a training job (`segd train --promote always`, or any job in the train queue) may force `promote: always`; false: a job may ask for `if_better` or `never` only, and `always` comes from this config alone. Not a job option.",
    )
    job_timeout_s: int = Field(default=4 * 3600, ge=60, description="RQ timeout of a training job.")
    retries: int = Field(
        default=1, ge=0, le=10, description="a crashed run resumes from its checkpoint"
    )

    @field_validator("base")
    @classmethod
    def _base(cls, base: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", base):
            raise ValueError('must be "current", "base" or a model version name')
        return base
