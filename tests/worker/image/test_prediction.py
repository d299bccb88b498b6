"""worker.image.prediction: `propose_kept` (the CPU round in numpy) against `select(propose())`,
the torch path it replaces, on a stand-in decoder answering random low-res logits."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from worker.image import prediction


class RandomDecoder:
    """A SamModel stand-in whose decoder answers seeded random (N, 3, h, w) logits and (N, 3)
    scores: smooth blobs, empty masks, fields near the threshold, tied scores."""

    device = torch.device("cpu")

    def __init__(self, hw=(48, 40), seed=0):
        self.hw = hw
        self.gen = torch.Generator().manual_seed(seed)

    def low_res_hw(self, image_hw):
        return self.hw

    def decode(self, features, index, points_xy, multimask=True):
        n, m = len(points_xy), 3 if multimask else 1
        coarse = torch.randn((n * m, 1, 7, 6), generator=self.gen) * 4 - 1
        logits = torch.nn.functional.interpolate(coarse, size=self.hw, mode="bilinear")
        logits = logits.reshape(n, m, *self.hw).contiguous()
        logits[0, :] = -5.0  # an empty answer
        if n > 1:
            logits[1, :] = torch.randn((m, *self.hw), generator=self.gen) * 1e-3  # near 0
        scores = torch.rand((n, m), generator=self.gen)
        if n > 2 and m > 1:
            scores[2, 1] = scores[2, 0]  # a tie: the first maximum wins
        scores = torch.round(scores * 8) / 8  # coarse: ties with min_score too
        return logits, scores


def _features():
    return SimpleNamespace(image_hw=[(480, 400)])


@pytest.mark.parametrize("region", [False, True])
@pytest.mark.parametrize("multimask", [True, False])
@pytest.mark.parametrize(
    ("threshold", "min_score", "min_stability"),
    [(0.0, 0.0, 0.0), (0.5, 0.25, 0.5), (-1.0, 0.5, 0.9), (-10.0, 0.0, 0.0)],
)
@pytest.mark.parametrize("use_store", [False, True])
def test_propose_kept_equals_select_of_propose(
    region, multimask, threshold, min_score, min_stability, use_store
):
    """Same kept points, logits, scores and stability bit for bit; the masks handed to the
    sampler are the kept logits above the threshold inside the region."""
    points = np.random.default_rng(0).uniform(0, 400, (11, 2)).astype(np.float32)
    region_lr = None
    if region:
        mask = np.ones((48, 40), bool)
        mask[:, :13] = False
        region_lr = torch.from_numpy(mask)
    store = prediction.LowResStore(2, (48, 40)) if use_store else None  # grows past 2
    kw = dict(multimask=multimask, batch=4, threshold=threshold)
    expected = prediction.select(
        prediction.propose(RandomDecoder(seed=3), _features(), 0, points, **kw),
        region_lr if region_lr is not None else torch.ones((48, 40), dtype=torch.bool),
        threshold=threshold,
        min_score=min_score,
        min_stability=min_stability,
    )
    got, masks = prediction.propose_kept(
        RandomDecoder(seed=3),
        _features(),
        0,
        points,
        region_lr,
        min_score=min_score,
        min_stability=min_stability,
        store=store,
        **kw,
    )
    assert len(got) == len(expected)
    if threshold == -10.0:  # every mask kept: no copy, the decoder's order
        assert len(got) == len(points)
    elif min_stability == 0.0:
        assert 0 < len(got) < len(points)
    np.testing.assert_array_equal(got.points_xy, expected.points_xy)
    assert torch.equal(got.logits, expected.logits)
    assert torch.equal(got.scores, expected.scores)
    assert torch.equal(got.stability, expected.stability)
    inside = region_lr if region_lr is not None else torch.ones((48, 40), dtype=torch.bool)
    np.testing.assert_array_equal(masks, ((expected.logits > threshold) & inside).numpy())
    if store is not None:
        assert torch.equal(store.logits(), expected.logits)


def test_store_concatenation_is_the_kept_logits_in_order():
    """Rounds written into one LowResStore read back as the concatenation of their parts."""
    store = prediction.LowResStore(3, (48, 40))
    model, parts = RandomDecoder(seed=5), []
    for start in (0, 5, 10):
        points = np.full((5, 2), start, np.float32)
        kept, _ = prediction.propose_kept(
            model,
            _features(),
            0,
            points,
            None,
            multimask=True,
            batch=2,
            threshold=0.0,
            min_score=0.0,
            min_stability=0.0,
            store=store,
        )
        parts.append(kept)
    joined = prediction.Proposals.concat(parts, (48, 40), torch.device("cpu"), store.logits())
    assert torch.equal(joined.logits, torch.cat([p.logits for p in parts]))
    assert len(joined) == store.count
