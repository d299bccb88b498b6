"""Tracking every object of a video with SAM2's video predictor, in bounded memory.

    tracker = Tracker(segmenter, predictor, config)
    for frame in tracker.track(rgb_frames, region):   # frames: iterable of (H, W, 3) uint8 RGB
        frame.index_map                                 # (H, W) uint16, 0 = background

The first frame is segmented exactly as an image is (`Segmenter`: sampling, prediction,
stitching); each segment becomes an object whose id is its segment id. Every
`video.reseed_every` frames the part of the frame no tracked object covers (inside the region,
if one was given) is segmented the same way and what is found there joins as new objects with
new ids. Ids never change: the tracker reports each object under the id it was added with.

Memory stays bounded however long the video is:
- frames are pulled from the stream one at a time (`FrameStore` keeps the last two);
- the predictor's state is built here instead of by `init_state` (which decodes every frame up
  front), and after each frame the per-object outputs SAM2 can no longer look at are dropped: its
  memory attention reads the conditioning frame(s) plus the last `num_maskmem - 1` frames, and
  object pointers from the last `max_obj_ptrs_in_encoder - 1` frames, so results are identical
  to SAM2's own `propagate_in_video` (tests check this);
- on CUDA the state lives in CPU memory (`video.offload_state_to_cpu`) and the model runs in bf16.

The per-frame loop is SAM2's `propagate_in_video` for forward tracking (same calls, same order)
without its progress bar, so new objects can join at any frame.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from common.config import Config
from worker.image.segmenter import Segmentation, Segmenter

# SAM2 needs a frame count; frames are read until the stream ends, so it is "unbounded".
UNBOUNDED_FRAMES = 2**31 - 1
# SAM2's image normalisation (sam2.utils.misc.load_video_frames).
IMAGE_MEAN = (0.485, 0.456, 0.406)
IMAGE_STD = (0.229, 0.224, 0.225)


class EndOfFrames(Exception):
    """The stream has no frame with the requested index."""


class FrameStore:
    """A window over a stream of (H, W, 3) uint8 RGB frames, indexable like SAM2's `images`.

    `store[t]` is frame t as SAM2's predictor wants it: (3, S, S) float32, resized to the
    model's input (PIL bicubic, as `load_video_frames` does) and normalised. Frames are read
    on demand in order; only the last `keep` are held, so reading frame t forgets t - keep.
    """

    def __init__(self, frames: Iterable[np.ndarray], image_size: int, keep: int = 2):
        self._frames = iter(frames)
        self.image_size = image_size
        self.keep = keep
        self._rgb: OrderedDict[int, np.ndarray] = OrderedDict()
        self._tensors: dict[int, torch.Tensor] = {}
        self._next = 0
        self.ended = False
        self._mean = torch.tensor(IMAGE_MEAN)[:, None, None]
        self._std = torch.tensor(IMAGE_STD)[:, None, None]

    def __len__(self) -> int:
        return UNBOUNDED_FRAMES

    def available(self, index: int) -> bool:
        """Read frames up to `index`; False when the stream ends before it."""
        while self._next <= index and not self.ended:
            try:
                rgb = next(self._frames)
            except StopIteration:
                self.ended = True
                break
            self._rgb[self._next] = rgb
            self._next += 1
            while len(self._rgb) > self.keep:
                old, _ = self._rgb.popitem(last=False)
                self._tensors.pop(old, None)
        return index < self._next and index in self._rgb

    def rgb(self, index: int) -> np.ndarray:
        """Frame `index` as (H, W, 3) uint8 RGB (one of the last `keep` read)."""
        if not self.available(index):
            raise EndOfFrames(index)
        return self._rgb[index]

    def __getitem__(self, index: int) -> torch.Tensor:
        tensor = self._tensors.get(index)
        if tensor is None:
            size = self.image_size
            resized = Image.fromarray(self.rgb(index)).resize((size, size))
            # float64 / 255 then float32, as SAM2's loader does (bit-identical inputs)
            tensor = torch.from_numpy(np.asarray(resized) / 255.0).permute(2, 0, 1).float()
            tensor = (tensor - self._mean) / self._std
            self._tensors[index] = tensor
        return tensor

    def held(self) -> int:
        """How many decoded frames are in memory."""
        return len(self._rgb)


@dataclass
class TrackedFrame:
    """One frame's result. index_map: (H, W) uint16, 0 = background; objects: id → score for
    every object tracked at this frame (score = sigmoid of SAM2's object score logit, its
    "object is visible" probability); new_ids: objects added at this frame; rgb: the frame."""

    index: int
    rgb: np.ndarray
    index_map: np.ndarray
    objects: dict[int, float]
    new_ids: list[int]
    seeds: Segmentation | None


def new_inference_state(predictor, frames: FrameStore, frame_hw: tuple[int, int], offload: bool):
    """SAM2's inference state (the dict `init_state` builds) over a streamed FrameStore."""
    device = predictor.device
    return {
        "images": frames,
        "num_frames": len(frames),
        "offload_video_to_cpu": True,
        "offload_state_to_cpu": offload,
        "video_height": frame_hw[0],
        "video_width": frame_hw[1],
        "device": device,
        "storage_device": torch.device("cpu") if offload else device,
        "point_inputs_per_obj": {},
        "mask_inputs_per_obj": {},
        "cached_features": {},
        "constants": {},
        "obj_id_to_idx": OrderedDict(),
        "obj_idx_to_id": OrderedDict(),
        "obj_ids": [],
        "output_dict_per_obj": {},
        "temp_output_dict_per_obj": {},
        "frames_tracked_per_obj": {},
    }


def memory_window(predictor) -> int:
    """How many past frames SAM2 can still read when tracking a frame (memories, object pointers)."""
    stride = max(1, int(getattr(predictor, "memory_temporal_stride_for_eval", 1)))
    return max(predictor.num_maskmem * stride, predictor.max_obj_ptrs_in_encoder) + 1


def index_map_from_logits(logits: torch.Tensor, ids: list[int], threshold: float) -> np.ndarray:
    """(N, 1, H, W) float mask logits of objects `ids` → (H, W) uint16 index map: each pixel
    goes to the object with the highest logit above `threshold`, else 0."""
    if not ids:
        return np.zeros(logits.shape[-2:], np.uint16)
    best, winner = logits[:, 0].max(dim=0)
    lut = torch.tensor(ids, dtype=torch.int32, device=logits.device)
    index = torch.where(best > threshold, lut[winner], torch.zeros_like(winner, dtype=torch.int32))
    return index.cpu().numpy().astype(np.uint16)


class Tracker:
    """Tracks a video's objects with one resident model (an image Segmenter for seeding and a
    SAM2VideoPredictor sharing its weights) and one configuration."""

    def __init__(self, segmenter: Segmenter, predictor, config: Config | None = None):
        self.segmenter = segmenter
        self.predictor = predictor
        self.config = config or segmenter.config
        self.window = memory_window(predictor)
        # SAM2's inference state (an untyped dict of tensors) and the frame stream, once tracking.
        self.state: Any = None
        self.frames: Any = None

    # --- helpers over SAM2's state --------------------------------------------------------
    def _add_objects(self, t: int, seeds: Segmentation, ids: list[int]) -> None:
        """Add each segment of `seeds` as an object at frame t (SAM2's add_new_mask)."""
        for segment, obj_id in zip(seeds.segments, ids, strict=True):
            self.predictor.add_new_mask(self.state, t, obj_id, seeds.index_map == segment.id)
        # Encode their memories now (SAM2 does this at the start of propagate_in_video) ...
        self.predictor.propagate_in_video_preflight(self.state)
        # ... after which the full-size mask inputs are not needed again.
        for per_frame in self.state["mask_inputs_per_obj"].values():
            per_frame.clear()

    def _step(self, t: int) -> tuple[torch.Tensor, list[float]]:
        """Track every object into frame t: (N, 1, H, W) logits at video size, N scores."""
        predictor, state = self.predictor, self.state
        masks, scores = [], []
        for obj_idx in range(len(state["obj_ids"])):
            outputs = state["output_dict_per_obj"][obj_idx]
            if t in outputs["cond_frame_outputs"]:
                current = outputs["cond_frame_outputs"][t]
                pred = current["pred_masks"].to(state["device"], non_blocking=True)
            else:
                current, pred = predictor._run_single_frame_inference(
                    inference_state=state,
                    output_dict=outputs,
                    frame_idx=t,
                    batch_size=1,
                    is_init_cond_frame=False,
                    point_inputs=None,
                    mask_inputs=None,
                    reverse=False,
                    run_mem_encoder=True,
                )
                outputs["non_cond_frame_outputs"][t] = current
            state["frames_tracked_per_obj"][obj_idx][t] = {"reverse": False}
            masks.append(pred)
            scores.append(float(torch.sigmoid(current["object_score_logits"].float()).max()))
        _, video_masks = predictor._get_orig_video_res_output(state, torch.cat(masks, dim=0))
        return video_masks, scores

    def _forget_before(self, t: int) -> None:
        """Drop what SAM2 can no longer read when tracking frames after t (keeps `window` frames)."""
        oldest = t - self.window + 1
        for outputs in self.state["output_dict_per_obj"].values():
            for old in [k for k in outputs["non_cond_frame_outputs"] if k < oldest]:
                del outputs["non_cond_frame_outputs"][old]
        for tracked in self.state["frames_tracked_per_obj"].values():
            for old in [k for k in tracked if k < oldest]:
                del tracked[old]

    def held_outputs(self) -> int:
        """The most per-frame outputs any object holds (bounded by the memory window)."""
        if self.state is None:
            return 0
        return max(
            (len(o["non_cond_frame_outputs"]) for o in self.state["output_dict_per_obj"].values()),
            default=0,
        )

    def _seed(self, rgb: np.ndarray, region: np.ndarray | None) -> Segmentation:
        return self.segmenter.segment(rgb, region)

    # --- the loop -------------------------------------------------------------------------
    def track(
        self,
        frames: Iterable[np.ndarray],
        region: np.ndarray | None = None,
        on_frame: Callable[[int], None] | None = None,
    ) -> Iterator[TrackedFrame]:
        """Segment the first frame, then track its objects (and, every `reseed_every` frames, new
        ones) through the rest. region: (H, W) bool, where objects may be seeded (None: anywhere).
        on_frame(frames_done) is called after each frame is handed out.
        """
        self.frames = FrameStore(frames, self.predictor.image_size)
        if not self.frames.available(0):
            return
        self.state = new_inference_state(
            self.predictor,
            self.frames,
            self.frames.rgb(0).shape[:2],
            self.config.video.offload_state_to_cpu,
        )
        self._next_id = 1
        t = 0
        while self.frames.available(t):
            # The contexts end before each yield: they must not leak into the caller's code.
            with torch.inference_mode(), self.segmenter.model.autocast():
                result = self._first_frame(region) if t == 0 else self._next_frame(t, region)
            self._forget_before(t)
            yield result
            if on_frame is not None:
                on_frame(t + 1)
            t += 1

    def _first_frame(self, region: np.ndarray | None) -> TrackedFrame:
        """Frame 0 is segmented exactly as an image; each segment becomes an object (same id)."""
        rgb = self.frames.rgb(0)
        seeds = self._seed(rgb, region)
        ids = [s.id for s in seeds.segments]  # 1..n in descending score order
        if ids:
            self._add_objects(0, seeds, ids)
            self._next_id = max(ids) + 1
        return TrackedFrame(0, rgb, seeds.index_map, self._scores_at(0, ids), ids, seeds)

    def _next_frame(self, t: int, region: np.ndarray | None) -> TrackedFrame:
        """Track every object into frame t; re-seed the uncovered part every `reseed_every` frames."""
        cfg = self.config
        rgb = self.frames.rgb(t)
        ids = list(self.state["obj_ids"])
        if ids:
            logits, scores = self._step(t)
            index_map = index_map_from_logits(logits, ids, cfg.model.mask_threshold)
            objects = dict(zip(ids, scores, strict=True))
            del logits
        else:
            index_map, objects = np.zeros(rgb.shape[:2], np.uint16), {}
        seeds, new_ids = None, []
        room = cfg.video.max_objects - len(ids)
        if cfg.video.reseed_every and t % cfg.video.reseed_every == 0 and room > 0:
            uncovered = index_map == 0
            if region is not None:
                uncovered &= region
            if uncovered.sum() >= max(cfg.stitching.min_area, 1):
                seeds = self._seed(rgb, uncovered)  # its segments lie inside `uncovered`
                seeds.segments = seeds.segments[:room]
                new_ids = list(range(self._next_id, self._next_id + len(seeds.segments)))
                if new_ids:
                    self._add_objects(t, seeds, new_ids)
                    self._next_id += len(new_ids)
                    for segment, obj_id in zip(seeds.segments, new_ids, strict=True):
                        index_map[seeds.index_map == segment.id] = obj_id
                    objects.update(self._scores_at(t, new_ids))
        return TrackedFrame(t, rgb, index_map, objects, new_ids, seeds)

    def _scores_at(self, t: int, ids: list[int]) -> dict[int, float]:
        """Object scores SAM2 gave objects `ids` on their conditioning frame t."""
        state, out = self.state, {}
        for obj_id in ids:
            outputs = state["output_dict_per_obj"][state["obj_id_to_idx"][obj_id]]
            current = outputs["cond_frame_outputs"].get(t)
            if current is not None:
                out[obj_id] = float(torch.sigmoid(current["object_score_logits"].float()).max())
        return out
