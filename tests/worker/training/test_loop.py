"""The trainer: it learns (overfit), each image is decoded with its own features, losses pick the
best of three outputs, the schedule, exact resume, and the run → version → promotion path."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from common import registry
from tests.conftest import tiny_config
from tests.synthetic import draw_scene, labelled_folder, write_pair
from worker.models.sam import SamModel
from worker.training.datasets import open_dataset
from worker.training.evaluation import best_ious
from worker.training.loop import Trainer, learning_rate
from worker.training.losses import mask_losses
from worker.training.prompts import instance_targets, sample_prompts
from worker.training.run import run_training

LIMITS = {"max_bytes": 10**8, "max_pixels": 10**8}
# Learns one image from random weights in ~10 steps (encoder included): fast enough for CI.
FAST = {
    "SEGD_TRAINING__TRAIN_ENCODER": "true",
    "SEGD_TRAINING__LR": "0.001",
    "SEGD_TRAINING__ENCODER_LR": "0.0003",
    "SEGD_TRAINING__WARMUP_STEPS": "2",
    "SEGD_TRAINING__VAL_EVERY": "10",
    "SEGD_TRAINING__BATCH_IMAGES": "1",
}


def _trainer(tmp_path, dataset_root, checkpoint=None, **env):
    env = {"SEGD_SAMPLING__POINTS": "8", **env}
    if checkpoint is not None:
        env["SEGD_MODEL__CHECKPOINT"] = str(checkpoint)
    config = tiny_config(tmp_path, **env)
    data = open_dataset(dataset_root, val_fraction=0.2, seed=0, **LIMITS)
    model = SamModel.load(config)
    return Trainer(model, data, config, config.training, tmp_path / "run"), model


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in module.named_parameters()}


def _changed(before: dict, module: torch.nn.Module) -> set[str]:
    return {n for n, p in module.named_parameters() if not torch.equal(before[n], p.detach())}


def test_overfitting_one_image_reaches_iou_09_and_every_trainable_part_learns(
    tmp_path, tiny_checkpoint
):
    """Random-weights tiny at 256 px, encoder trainable: one image is learnt to IoU >= 0.9
    (the service's own segmenter on it), and the encoder, prompt encoder and decoder all moved
    while the video-memory parts (not trained) did not."""
    image, label = draw_scene(256, 1, seed=3)
    write_pair(tmp_path / "one", "a", image, label)
    trainer, model = _trainer(
        tmp_path,
        tmp_path / "one",
        tiny_checkpoint,
        **FAST,
        SEGD_TRAINING__STEPS="20",
        SEGD_TRAINING__PATIENCE="0",
    )
    sam = model.sam
    before = _snapshot(sam)
    outcome = trainer.run()

    assert outcome.before < 0.6, "the random model must not already segment the shape"
    assert outcome.best >= 0.9, outcome.history
    assert [h["step"] for h in outcome.history] == [0, 10, 20]
    changed = _changed(before, sam)
    for part in ("image_encoder.", "sam_prompt_encoder.", "sam_mask_decoder."):
        assert any(n.startswith(part) for n in changed), f"{part} did not train"
    assert "no_mem_embed" in changed
    frozen = [n for n in before if n.startswith(("memory_encoder.", "memory_attention."))]
    assert frozen and not set(frozen) & changed

    # The best weights on disk are the model that scored best, in the official format.
    best = SamModel.load(tiny_config(tmp_path, SEGD_MODEL__CHECKPOINT=str(outcome.best_weights)))
    prompt = torch.tensor(
        [[float(np.nonzero(label)[1].mean()), float(np.nonzero(label)[0].mean())]]
    )
    logits, iou = best.decode(best.encode([image]), 0, prompt)
    mask = torch.nn.functional.interpolate(logits, (256, 256), mode="bilinear")[0] > 0
    ious = [(m.numpy() & (label > 0)).sum() / (m.numpy() | (label > 0)).sum() for m in mask]
    assert max(ious) >= 0.9


def test_a_frozen_encoder_does_not_change(tmp_path, tiny_checkpoint):
    root = labelled_folder(tmp_path / "shapes", images=2, size=96)
    trainer, model = _trainer(
        tmp_path, root, tiny_checkpoint, SEGD_TRAINING__STEPS="2", SEGD_TRAINING__VAL_EVERY="2"
    )
    before = _snapshot(model.sam)
    trainer.run()
    changed = _changed(before, model.sam)
    assert any(n.startswith("sam_mask_decoder.") for n in changed)
    assert not any(n.startswith("image_encoder.") for n in changed)


def test_each_image_of_a_batch_is_decoded_with_its_own_features(tmp_path, tiny_checkpoint):
    """Change image 2 of a batch: only image 2's masks change, and image 1's masks equal those
    of image 1 decoded alone (the seed fed the last image's high-res features to all)."""
    root = labelled_folder(tmp_path / "shapes", images=2, size=128)
    trainer, model = _trainer(tmp_path, root, tiny_checkpoint)
    model.sam.eval()
    rng = np.random.default_rng(0)
    pairs = [draw_scene(128, 3, seed=s) for s in (1, 2)]
    prompts = [
        sample_prompts(*instance_targets(label, model.image_size), trainer.settings, rng)
        for _, label in pairs
    ]
    images = [image for image, _ in pairs]
    changed_image = images[1].copy()
    changed_image[:64] = 255 - changed_image[:64]

    with torch.no_grad():
        base = trainer.decode(model.preprocess(images), prompts)
        other = trainer.decode(model.preprocess([images[0], changed_image]), prompts)
        alone = trainer.decode(model.preprocess(images[:1]), prompts[:1])

    assert torch.allclose(base[0][0], other[0][0], atol=1e-5)  # image 1 untouched
    assert torch.allclose(base[0][0], alone[0][0], atol=1e-5)  # = decoded on its own
    assert (base[1][0] - other[1][0]).abs().max() > 1e-2  # image 2 follows its own pixels


def test_the_loss_is_taken_on_the_best_of_the_three_masks():
    target = torch.zeros(2, 8, 8)
    target[:, 2:6, 2:6] = 1
    logits = torch.full((2, 3, 8, 8), -8.0)
    logits[0, 1] = target[0] * 16 - 8  # instance 0: output 1 is right
    logits[1, 2] = target[1] * 16 - 8  # instance 1: output 2 is right
    logits.requires_grad_(True)
    iou_pred = torch.full((2, 3), 0.5, requires_grad=True)
    loss, best_iou = mask_losses(logits, iou_pred, target)
    loss.backward()
    assert torch.allclose(best_iou, torch.ones(2))
    grad = logits.grad.flatten(2).abs().sum(-1)
    # Only the chosen output of each instance gets a mask gradient.
    assert grad[0, 1] > 0 and grad[0, 0] == 0 and grad[0, 2] == 0
    assert grad[1, 2] > 0 and grad[1, 0] == 0 and grad[1, 1] == 0
    assert (iou_pred.grad != 0).all()  # the IoU head learns for every output


def test_warm_up_then_cosine_decay(tmp_path):
    settings = tiny_config(tmp_path, SEGD_TRAINING__STEPS="100").training
    rates = [learning_rate(step, settings, 1.0) for step in range(100)]
    assert rates[0] < rates[25] < rates[49] <= 1.0  # warm-up over 50 steps
    assert rates[50] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(rates[50:], rates[51:], strict=False))  # decays
    assert rates[99] < 0.01


def test_best_ious_matches_each_instance_to_its_best_segment():
    truth = np.zeros((10, 10), np.int32)
    truth[:5, :5], truth[5:, 5:] = 3, 9
    predicted = np.zeros((10, 10), np.uint16)
    predicted[:5, :5] = 1  # exact
    predicted[5:, 5:8] = 2  # 15 of 25
    assert np.allclose(best_ious(predicted, truth), [1.0, 0.6])
    assert np.allclose(best_ious(np.zeros_like(predicted), truth), [0.0, 0.0])


def test_a_crashed_run_resumes_exactly_where_it_stopped(tmp_path, tiny_checkpoint):
    """The same seed gives the same weights whether the run went straight through or crashed
    after its step-3 checkpoint and resumed."""
    root = labelled_folder(tmp_path / "shapes", images=3, size=96)
    env = {
        "SEGD_TRAINING__STEPS": "6",
        "SEGD_TRAINING__CHECKPOINT_EVERY": "3",
        "SEGD_TRAINING__VAL_EVERY": "100",
        "SEGD_TRAINING__BATCH_IMAGES": "2",
    }
    straight, model_a = _trainer(tmp_path / "a", root, tiny_checkpoint, **env)
    straight.run()

    crashing, _ = _trainer(tmp_path / "b", root, tiny_checkpoint, **env)

    def crash(info):
        if info.get("step") == 3:
            raise RuntimeError("power cut")

    with pytest.raises(RuntimeError, match="power cut"):
        crashing.run(crash)
    resumed, model_b = _trainer(tmp_path / "b", root, tiny_checkpoint, **env)
    outcome = resumed.run()
    assert outcome.resumed_from == 3 and outcome.steps == 6
    for (name, a), b in zip(model_a.sam.named_parameters(), model_b.sam.parameters(), strict=True):
        assert torch.equal(a, b), name


def test_a_run_publishes_a_version_with_its_card_and_promotes_it_if_better(
    tmp_path, tiny_checkpoint
):
    # One image: it is also the validation set (an overfit check), so the run must improve.
    root = labelled_folder(tmp_path / "datasets" / "shapes", images=1, size=256, shapes=1, seed=3)
    config = tiny_config(
        tmp_path,
        SEGD_MODEL__CHECKPOINT=str(tiny_checkpoint),
        SEGD_SAMPLING__POINTS="8",
        SEGD_TRAINING__DATASETS_ROOT=str(tmp_path / "datasets"),
        **FAST,
    )
    phases = []
    summary = run_training(config, "shapes", {"steps": 20}, "run1", phases.append)
    version = summary["version"]
    assert version.startswith("shapes-") and summary["steps"] == 20
    card = registry.read_card(config.paths.models, version)
    assert card["dataset"]["fingerprint"] and card["dataset"]["path"] == str(root.resolve())
    assert card["base"]["version"] == "base" and card["model"]["image_size"] == 256
    assert card["settings"]["steps"] == 20 and card["hardware"]["device"] == "cpu"
    assert {p["phase"] for p in phases} >= {"checking data", "zero-shot validation", "training"}
    assert not (config.paths.models / ".runs" / "run1").exists()  # cleaned up when published
    # Weights load with the safe loader, as a worker would load them.
    loaded = SamModel.load_version(config, version)
    assert loaded.info.model_version == version
    assert card["validation"]["miou_after"] > card["validation"]["miou_before"]
    assert summary["promoted"] and card["promoted"]
    assert registry.current_version(config.paths.models) == version
    history = json.loads((config.paths.models / registry.HISTORY_FILE).read_text())
    assert history["log"][-1] == {**history["log"][-1], "action": "training", "version": version}


def test_a_run_whose_weights_become_non_finite_stops_at_that_step(tmp_path, tiny_checkpoint):
    """A learning rate of inf (what a job could once send; settings built past validation here)
    makes the first step's weights non-finite: the run stops there with TrainingDiverged naming
    the step and the learning rates, and leaves no resumable state claiming later steps."""
    from worker.training.loop import TrainingDiverged

    root = labelled_folder(tmp_path / "shapes", images=2, size=96)
    trainer, _ = _trainer(tmp_path, root, tiny_checkpoint, SEGD_TRAINING__STEPS="5")
    trainer.settings = trainer.settings.model_copy(update={"lr": float("inf")})

    with pytest.raises(TrainingDiverged, match="at step 1: the weights became non-finite") as exc:
        trainer.run()

    assert "nothing was published (training.lr = inf" in str(exc.value)
    assert not (tmp_path / "run" / "state.pt").exists()


def test_a_run_whose_loss_is_non_finite_is_never_published(tmp_path, tiny_checkpoint):
    """Through run_training: a base checkpoint with a nan in the IoU head gives a nan loss at
    the first step; the run fails with TrainingDiverged, no version is published and the
    current model stays the base."""
    from worker.training.loop import TrainingDiverged

    labelled_folder(tmp_path / "datasets" / "shapes", images=2, size=96)
    state = torch.load(tiny_checkpoint, map_location="cpu", weights_only=True)
    bias = "sam_mask_decoder.iou_prediction_head.layers.2.bias"
    state["model"][bias] = torch.full_like(state["model"][bias], float("nan"))
    poisoned = tmp_path / "poisoned.pt"
    torch.save(state, poisoned)
    config = tiny_config(
        tmp_path,
        SEGD_MODEL__CHECKPOINT=str(poisoned),
        SEGD_SAMPLING__POINTS="8",
        SEGD_TRAINING__DATASETS_ROOT=str(tmp_path / "datasets"),
        SEGD_TRAINING__PROMOTE="always",
    )

    with pytest.raises(TrainingDiverged, match="at step 1: the loss became non-finite"):
        run_training(config, "shapes", {"steps": 3}, "run1")

    assert registry.current_version(config.paths.models) == registry.BASE
    versions = [p.name for p in config.paths.models.iterdir() if not p.name.startswith(".")]
    assert [v for v in versions if v.startswith("shapes-")] == []
