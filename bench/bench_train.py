"""Training throughput: segd's training step against the seed tutorial's, same model, same machine.

  seed step        the seed's loop body: SAM2ImagePredictor.set_image (encoder under no_grad),
                   one image, every instance prompted by one point, the first of the three masks
                   upsampled to the image and trained with BCE + 0.05 x |IoU error|, AdamW over
                   all parameters (as the seed builds it), bf16 autocast + GradScaler on CUDA
  segd frozen enc  worker.training.loop.Trainer.step: a batch of images, each decoded against its own
                   features, best of three masks (focal + dice) + IoU head, fused AdamW on the
                   prompt encoder and decoder
  segd train enc   the same with the image encoder trained too

Images are synthetic scenes (coloured shapes, 8 instances) at the model's input size; weights
are random (no download here). images/s = images per step / seconds per step (median of the
timed steps after one warm-up step). On CUDA the peak GPU memory of each is reported.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from common.config import load_config
from tests.synthetic import labelled_folder
from worker.models.sam import SamModel
from worker.training.datasets import open_dataset, read_sample
from worker.training.loop import Trainer

ROOT = Path(__file__).resolve().parents[1]
SHIPPED_CONFIG = ROOT / "config.yaml"


def seed_step_fn(model: SamModel, samples: list, limits) -> Callable[[], int]:
    """The seed tutorial's training step on one image (its bugs in multi-image batches aside)."""
    predictor = model.image_predictor()
    sam = model.sam
    sam.sam_mask_decoder.train(True)
    sam.sam_prompt_encoder.train(True)
    optimizer = torch.optim.AdamW(params=sam.parameters(), lr=1e-5, weight_decay=4e-5)
    cuda = model.device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=cuda)
    rng = np.random.default_rng(0)
    state = {"i": 0}

    def step() -> int:
        image, label = read_sample(samples[state["i"] % len(samples)], *limits)
        state["i"] += 1
        ids = [i for i in np.unique(label) if i > 0]
        masks, points = [], []
        for i in ids:
            ys, xs = np.nonzero(label == i)
            k = rng.integers(len(xs))
            masks.append(label == i)
            points.append([[xs[k], ys[k]]])
        gt_mask = torch.tensor(np.array(masks), dtype=torch.float32, device=model.device)
        with torch.autocast(model.device.type, dtype=torch.bfloat16, enabled=cuda):
            predictor.set_image(image)
            _, coords, labels, _ = predictor._prep_prompts(
                np.array(points), np.ones((len(points), 1)), box=None, mask_logits=None,
                normalize_coords=True,
            )  # fmt: skip
            sparse, dense = sam.sam_prompt_encoder(points=(coords, labels), boxes=None, masks=None)
            high_res = [level[-1].unsqueeze(0) for level in predictor._features["high_res_feats"]]
            low_res, scores, _, _ = sam.sam_mask_decoder(
                image_embeddings=predictor._features["image_embed"][-1].unsqueeze(0),
                image_pe=sam.sam_prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=True,
                repeat_image=coords.shape[0] > 1,
                high_res_features=high_res,
            )
            prd_masks = predictor._transforms.postprocess_masks(low_res, predictor._orig_hw[-1])
            prd = torch.sigmoid(prd_masks[:, 0])
            seg_loss = (
                -gt_mask * torch.log(prd + 1e-5) - (1 - gt_mask) * torch.log(1 - prd + 1e-5)
            ).mean()
            inter = (gt_mask * (prd > 0.5)).sum(1).sum(1)
            iou = inter / (gt_mask.sum(1).sum(1) + (prd > 0.5).sum(1).sum(1) - inter)
            loss = seg_loss + torch.abs(scores[:, 0] - iou).mean() * 0.05
        sam.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        return 1

    return step


def measure(step, steps: int, device: torch.device) -> tuple[float, int | None]:
    """(images/s, peak GPU bytes or None): median over `steps` timed steps after one warm-up."""
    step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    rates = []
    for _ in range(steps):
        start = time.perf_counter()
        images = step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        rates.append(images / (time.perf_counter() - start))
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    return statistics.median(rates), peak


def _trainer_step(trainer: Trainer):
    counter = iter(range(10**6))
    return lambda: trainer.step(next(counter))["images"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench train", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--size", default="tiny", choices=["tiny", "small", "base_plus", "large"])
    parser.add_argument("--image-size", type=int, default=1024, help="model input (seed: 1024)")
    parser.add_argument("--batch", type=int, default=4, help="segd images per step")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per row")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)

    env = {
        "SEGD_MODEL__CHECKPOINT": "random",
        "SEGD_MODEL__SIZE": args.size,
        "SEGD_MODEL__IMAGE_SIZE": str(args.image_size),
        "SEGD_MODEL__DEVICE": args.device,
        "SEGD_TRAINING__BATCH_IMAGES": str(args.batch),
    }
    with tempfile.TemporaryDirectory() as tmp:
        root = labelled_folder(Path(tmp) / "scenes", images=8, size=args.image_size, shapes=8)
        config = load_config(SHIPPED_CONFIG, env)
        data = open_dataset(root, val_fraction=0.2, seed=0, max_bytes=10**9, max_pixels=10**9)
        limits = (config.inputs.max_file_bytes, config.inputs.max_pixels)
        rows = []
        model = SamModel.load(config)
        rows.append(
            (
                "seed step (1 image)",
                *measure(seed_step_fn(model, data.train, limits), args.steps, model.device),
            )
        )
        for train_encoder in (False, True):
            model = SamModel.load(config)
            settings = config.training.model_copy(update={"train_encoder": train_encoder})
            trainer = Trainer(model, data, config, settings, Path(tmp) / f"run{train_encoder}")
            model.sam.train()
            name = f"segd {'train enc' if train_encoder else 'frozen enc'} ({args.batch} images)"
            step = _trainer_step(trainer)
            rows.append((name, *measure(step, args.steps, model.device)))
        device = model.device

    seed_rate = rows[0][1]
    print(
        f"\n## Training throughput — {args.size} @ {args.image_size} px, {device} "
        f"({torch.cuda.get_device_name(device) if device.type == 'cuda' else platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads), random weights, 8 instances per image\n"
    )
    print("| step | images/s | vs seed | peak GPU memory |")
    print("|---|---|---|---|")
    for name, rate, peak in rows:
        memory = f"{peak / 2**30:.2f} GiB" if peak is not None else "n/a (CPU)"
        print(f"| {name} | {rate:.3f} | {rate / seed_rate:.2f}x | {memory} |")


if __name__ == "__main__":
    main()
