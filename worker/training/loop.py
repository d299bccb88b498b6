"""Fine-tuning SAM2 on a labelled folder: one training step, validation, the loop.

Read top to bottom:

1. `select_trainable`: the prompt encoder and mask decoder train; the image encoder optionally.
2. `prompts.sample_prompts`: for each image of a batch, up to K instances, each prompted by
   random positive points (optionally negative points and a jittered box), in model-input pixels.
3. `losses.mask_losses`: all three mask outputs are scored against the instance; the loss is
   taken on the best one (20 x focal + dice, as SAM2's own trainer), plus an L1 loss on the IoU
   head for every output.
4. `Trainer.step`: the encoder runs once on the batch (with gradients only when it trains;
   never through SAM2ImagePredictor's no_grad path); each image is then decoded against its own
   image embedding and its own high-resolution features.
5. `evaluation.evaluate`: validation mIoU with the service's own protocol (the `Segmenter`, its sampling,
   prediction and stitching), each ground-truth instance matched to its best predicted segment.
6. `Trainer.run`: zero-shot score first, AdamW with linear warm-up and cosine decay, gradient
   clipping, validation every `val_every` steps, the best weights kept, early stopping, and a
   resumable checkpoint every `checkpoint_every` steps.

Images are resized to the model's square input exactly as at inference (`SamModel.preprocess`),
so the resolution trained at is the one served at. bf16 autocast on CUDA; float32 on the CPU
unless `model.dtype` says otherwise. A seed makes a run reproducible.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from common.config import Config, TrainingConfig
from common.errors import SegdError
from worker.models.sam import Sam2Module, SamModel
from worker.training.datasets import Dataset, Sample, read_sample
from worker.training.evaluation import evaluate
from worker.training.losses import mask_losses
from worker.training.prompts import Prompts, instance_targets, sample_prompts

log = logging.getLogger("segd.training")

STATE_FILE, BEST_FILE = "state.pt", "best.pt"


# --- 1. what trains -------------------------------------------------------------------------
def select_trainable(sam: Sam2Module, train_encoder: bool) -> dict[str, list]:
    """Freeze everything, then unfreeze the parts that train; returns name → parameters."""
    sam.requires_grad_(False)
    groups = {"decoder": [*sam.sam_mask_decoder.parameters(), *sam.sam_prompt_encoder.parameters()]}
    if train_encoder:
        groups["encoder"] = [*sam.image_encoder.parameters(), sam.no_mem_embed]
    for params in groups.values():
        for param in params:
            param.requires_grad_(True)
    return groups


class TrainingDiverged(SegdError):
    """The loss or the weights became inf or nan: the run stops; nothing is published."""

    def __init__(self, step: int, what: str, settings: TrainingConfig):
        super().__init__(
            f"training diverged at step {step + 1}: {what} became non-finite (inf or nan); the "
            f"run was stopped and nothing was published (training.lr = {settings.lr:g}, "
            f"encoder_lr = {settings.encoder_lr:g}, grad_clip = {settings.grad_clip:g}: try a "
            "lower lr)"
        )


# --- 6. the loop ----------------------------------------------------------------------------
def learning_rate(step: int, settings: TrainingConfig, base: float) -> float:
    """Linear warm-up over `warmup_steps`, then cosine decay to 0 at `steps`."""
    warmup = min(settings.warmup_steps, settings.steps - 1)
    if step < warmup:
        return base * (step + 1) / (warmup + 1)
    progress = (step - warmup) / max(1, settings.steps - warmup)
    return base * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


@dataclass
class Outcome:
    """What a run achieved; `best_weights` is an official-format checkpoint of the best model."""

    before: float
    best: float
    best_step: int
    steps: int
    stopped_early: bool
    history: list[dict]
    train_seconds: float
    images_per_s: float
    best_weights: Path
    peak_gpu_bytes: int | None = None
    resumed_from: int | None = None
    extra: dict = field(default_factory=dict)


class Trainer:
    """Fine-tunes `model.sam` in place on `dataset` (see the module docstring)."""

    def __init__(
        self,
        model: SamModel,
        dataset: Dataset,
        config: Config,
        settings: TrainingConfig,
        run_dir: Path,
    ):
        self.model, self.sam = model, model.sam
        self.dataset, self.config, self.settings = dataset, config, settings
        self.run_dir = run_dir
        self.size = model.image_size
        self.rng = np.random.default_rng(settings.seed)
        torch.manual_seed(settings.seed)
        if model.device.type == "cpu":
            # Tiny gradients underflow to denormals, which x86 CPUs handle ~100x slower: flushing
            # them to zero made CPU steps 3x faster here (process-wide; each run is a process).
            torch.set_flush_denormal(True)
        self.groups = select_trainable(self.sam, settings.train_encoder)
        self.trainable = [p for params in self.groups.values() for p in params]
        self.optimizer = torch.optim.AdamW(
            [
                {"params": params, "lr": self._base_lr(name), "name": name}
                for name, params in self.groups.items()
            ],
            weight_decay=settings.weight_decay,
            fused=True,  # one kernel for all tensors (the per-tensor loop is slow on the CPU)
        )
        limits = config.inputs
        self.read = lru_cache(maxsize=64)(
            lambda sample: read_sample(sample, limits.max_file_bytes, limits.max_pixels)
        )
        self._order: list[int] = []

    def _base_lr(self, group: str) -> float:
        return self.settings.encoder_lr if group == "encoder" else self.settings.lr

    # --- data ---
    def _next_samples(self) -> list[Sample]:
        """The next `batch_images` training samples: a fresh seeded permutation each epoch."""
        chosen: list[Sample] = []
        while len(chosen) < self.settings.batch_images:
            if not self._order:
                self._order = list(self.rng.permutation(len(self.dataset.train)))
            chosen.append(self.dataset.train[self._order.pop()])
        return chosen

    def batch(self, samples: list[Sample]) -> tuple[torch.Tensor, list[Prompts]]:
        """(B, 3, S, S) model inputs and the prompts of each image (images without a usable
        instance at model resolution are dropped)."""
        images, prompts = [], []
        for sample in samples:
            image, label = self.read(sample)
            label_s, ids = instance_targets(label, self.size)
            if not len(ids):
                continue
            images.append(image)
            prompts.append(sample_prompts(label_s, ids, self.settings, self.rng))
        if not images:
            return torch.zeros(0), []
        return self.model.preprocess(images), prompts

    # --- 4. one step ---
    def decode(
        self, inputs: torch.Tensor, prompts: list[Prompts]
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Encoder once on the batch, then the decoder per image against that image's features.

        inputs (B, 3, S, S). Returns, per image b, low-res logits (K_b, 3, S/4, S/4) and
        predicted IoU (K_b, 3): decoded with image_embed[b] and high-res features [b] only
        (the seed tutorial decoded every image with the last image's high-res features).
        """
        sam, device = self.sam, self.model.device
        with self.model.autocast():
            if self.settings.train_encoder:
                image_embed, high_res = self.model.backbone_features(inputs)
            else:
                with torch.no_grad():
                    image_embed, high_res = self.model.backbone_features(inputs)
            outputs = []
            for b, prompt in enumerate(prompts):
                sparse, dense = sam.sam_prompt_encoder(
                    points=(prompt.coords.to(device), prompt.labels.to(device)),
                    boxes=None,
                    masks=None,
                )
                logits, iou_pred, _, _ = sam.sam_mask_decoder(
                    image_embeddings=image_embed[b : b + 1],
                    image_pe=sam.sam_prompt_encoder.get_dense_pe(),
                    sparse_prompt_embeddings=sparse,
                    dense_prompt_embeddings=dense,
                    multimask_output=True,
                    repeat_image=True,
                    high_res_features=[level[b : b + 1] for level in high_res],
                )
                outputs.append((logits.float(), iou_pred.float()))
        return outputs

    def forward(
        self, inputs: torch.Tensor, prompts: list[Prompts]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Loss (scalar, mean over instances) and the best-output IoU of every instance (N,)."""
        total = torch.zeros(())
        best: list[torch.Tensor] = []
        for (logits, iou_pred), prompt in zip(self.decode(inputs, prompts), prompts, strict=True):
            logits = F.interpolate(logits, (self.size, self.size), mode="bilinear")
            loss, best_iou = mask_losses(logits, iou_pred, prompt.targets.to(logits.device))
            total = total + loss
            best.append(best_iou)
        ious = torch.cat(best)
        return total / max(len(ious), 1), ious

    def step(self, step: int) -> dict:
        """One optimisation step; returns {"loss", "iou", "images"} of the batch."""
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(step, self.settings, self._base_lr(group["name"]))
        inputs, prompts = self.batch(self._next_samples())
        if not prompts:
            return {"loss": float("nan"), "iou": float("nan"), "images": 0}
        loss, ious = self.forward(inputs, prompts)
        if not torch.isfinite(loss.detach()):
            raise TrainingDiverged(step, "the loss", self.settings)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.trainable, self.settings.grad_clip)
        self.optimizer.step()
        # One device sync per step: a non-finite weight would be saved as "best" and published.
        finite = torch.stack([p.detach().isfinite().all() for p in self.trainable]).all()
        if not bool(finite):
            raise TrainingDiverged(step, "the weights", self.settings)
        return {"loss": loss.item(), "iou": ious.mean().item(), "images": len(prompts)}

    def validate(self) -> float:
        samples = self.dataset.val[: self.settings.val_max_images]
        return evaluate(self.model, self.config, samples, self.read)

    # --- checkpoints ---
    def _save_best(self) -> None:
        tmp = self.run_dir / f".{BEST_FILE}.tmp"
        torch.save({"model": self.sam.state_dict()}, tmp)
        tmp.replace(self.run_dir / BEST_FILE)

    def _save_state(self, progress: dict) -> None:
        """Everything a crashed run needs to continue exactly (loaded with the safe loader)."""
        names = {id(p): n for n, p in self.sam.named_parameters()}
        state = {
            "trainable": {names[id(p)]: p.detach().cpu() for p in self.trainable},
            "optimizer": self.optimizer.state_dict(),
            "numpy_rng": self.rng.bit_generator.state,
            "torch_rng": torch.get_rng_state(),
            "order": [int(i) for i in self._order],
            **progress,
        }
        tmp = self.run_dir / f".{STATE_FILE}.tmp"
        torch.save(state, tmp)
        tmp.replace(self.run_dir / STATE_FILE)

    def _load_state(self) -> dict | None:
        path = self.run_dir / STATE_FILE
        if not path.is_file():
            return None
        state = torch.load(path, map_location="cpu", weights_only=True)
        params = dict(self.sam.named_parameters())
        with torch.no_grad():
            for name, tensor in state.pop("trainable").items():
                params[name].copy_(tensor)
        self.optimizer.load_state_dict(state.pop("optimizer"))
        self.rng.bit_generator.state = state.pop("numpy_rng")
        torch.set_rng_state(state.pop("torch_rng"))
        self._order = list(state.pop("order"))
        return state

    # --- 6. the loop ---
    def run(self, report: Callable[[dict], None] = lambda info: None) -> Outcome:
        """Train for `settings.steps` steps (or until early stopping); resumes if it can."""
        settings = self.settings
        self.run_dir.mkdir(parents=True, exist_ok=True)
        resumed = self._load_state()
        if resumed:
            progress = resumed
            log.info("resuming at step %d from %s", progress["step"], self.run_dir / STATE_FILE)
        else:
            report({"phase": "zero-shot validation", "step": 0, "steps": settings.steps})
            before = self.validate()
            log.info("zero-shot validation mIoU %.4f", before)
            self._save_best()
            progress = {
                "step": 0,
                "before": before,
                "best": before,
                "best_step": 0,
                "history": [{"step": 0, "miou": before}],
                "since_best": 0,
                "train_seconds": 0.0,
                "images": 0,
                "stopped_early": False,
            }
        resumed_from = progress["step"] if resumed else None
        cuda = self.model.device.type == "cuda"
        if cuda:
            torch.cuda.reset_peak_memory_stats(self.model.device)

        self.sam.train()
        losses: list[float] = []
        clock = time.perf_counter()
        while progress["step"] < settings.steps and not progress["stopped_early"]:
            stats = self.step(progress["step"])
            progress["step"] += 1
            progress["images"] += stats["images"]
            losses.append(stats["loss"])
            now = time.perf_counter()
            progress["train_seconds"] += now - clock
            clock = now
            step = progress["step"]
            validated = step % settings.val_every == 0 or step == settings.steps
            if validated:
                score = self.validate()
                progress["history"].append({"step": step, "miou": score})
                if score > progress["best"] + 1e-6:
                    progress.update(best=score, best_step=step, since_best=0)
                    self._save_best()
                else:
                    progress["since_best"] += 1
                    if settings.patience and progress["since_best"] >= settings.patience:
                        progress["stopped_early"] = True
                log.info("step %d: validation mIoU %.4f (best %.4f)", step, score, progress["best"])
                clock = time.perf_counter()  # validation time is not training time
            if validated or step % settings.checkpoint_every == 0:
                self._save_state(progress)
            rate = step / max(progress["train_seconds"], 1e-9)
            report(
                {
                    "phase": "training",
                    "step": step,
                    "steps": settings.steps,
                    "loss": float(np.nanmean(losses[-20:])),
                    "val_miou": progress["history"][-1]["miou"],
                    "best_miou": progress["best"],
                    "eta_s": (settings.steps - step) / rate if rate else None,
                }
            )
        self.sam.eval()
        self._save_state(progress)
        seconds = progress["train_seconds"]
        return Outcome(
            before=progress["before"],
            best=progress["best"],
            best_step=progress["best_step"],
            steps=progress["step"],
            stopped_early=progress["stopped_early"],
            history=progress["history"],
            train_seconds=seconds,
            images_per_s=progress["images"] / seconds if seconds else 0.0,
            best_weights=self.run_dir / BEST_FILE,
            peak_gpu_bytes=torch.cuda.max_memory_allocated(self.model.device) if cuda else None,
            resumed_from=resumed_from,
        )
