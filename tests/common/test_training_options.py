"""A training job's options (JSON from the train queue, where RQ's parser reads `Infinity`) are
finite and bounded, each error names the option, and a job may force promotion only when the
operator allows it (training.allow_job_promote)."""

from __future__ import annotations

import json

import pytest

from common.config import TRAINING_JOB_OPTIONS, load_config, training_settings
from common.errors import ConfigError

CONFIG = load_config(None, environ={})


def _refused(options: dict) -> str:
    with pytest.raises(ConfigError, match="invalid training option") as excinfo:
        training_settings(CONFIG, options)
    return str(excinfo.value)


@pytest.mark.parametrize(
    ("text", "option"),
    [
        ('{"lr": Infinity}', "lr"),
        ('{"encoder_lr": Infinity}', "encoder_lr"),
        ('{"grad_clip": Infinity}', "grad_clip"),
        ('{"lr": NaN}', "lr"),
        ('{"weight_decay": -Infinity}', "weight_decay"),
        ('{"box_probability": NaN}', "box_probability"),
    ],
)
def test_non_finite_numbers_from_a_jobs_json_are_refused_naming_the_option(text, option):
    """Infinity / NaN as RQ's JSON parser reads them are refused, the message naming the key."""
    message = _refused(json.loads(text))
    assert f"training option: {option} = " in message
    assert "finite number" in message


@pytest.mark.parametrize(
    ("option", "value", "bound"),
    [
        ("batch_images", 1e9, "less than or equal to 64"),
        ("points_per_instance", 10**9, "less than or equal to 64"),
        ("instances_per_image", 257, "less than or equal to 256"),
        ("negative_points", 65, "less than or equal to 64"),
        ("lr", 2.0, "less than or equal to 1"),
        ("grad_clip", 1e4, "less than or equal to 1000"),
        ("steps", 10**7 + 1, "less than or equal to 10000000"),
        ("seed", -1, "greater than or equal to 0"),
        ("seed", 2**32, "less than 4294967296"),
    ],
)
def test_out_of_range_options_are_refused_naming_the_option_and_the_bound(option, value, bound):
    """Values that would exhaust memory, ruin the model or fail later (a negative seed) are
    refused at validation, naming the option, the value and the bound."""
    message = _refused({option: value})
    assert f"training option: {option} = {value!r}: Input should be {bound}" in message


def test_the_largest_allowed_values_pass():
    """The bounds themselves are allowed."""
    settings = training_settings(
        CONFIG,
        {"batch_images": 64, "points_per_instance": 64, "lr": 1, "seed": 2**32 - 1, "steps": 10**7},
    )
    assert settings.batch_images == 64 and settings.seed == 2**32 - 1


def test_a_job_may_not_force_promotion_unless_the_operator_allows_it():
    """promote: always from a job is refused by default (the message names the option and
    training.allow_job_promote); if_better and never pass; with allow_job_promote: true, always
    passes; allow_job_promote is itself no job option."""
    message = _refused({"promote": "always"})
    assert "promote = 'always'" in message and "training.allow_job_promote is false" in message
    assert training_settings(CONFIG, {"promote": "never"}).promote == "never"
    assert training_settings(CONFIG, {"promote": "if_better"}).promote == "if_better"

    allowed = load_config(None, environ={"SEGD_TRAINING__ALLOW_JOB_PROMOTE": "true"})
    assert training_settings(allowed, {"promote": "always"}).promote == "always"
    assert "allow_job_promote" not in TRAINING_JOB_OPTIONS
    with pytest.raises(ConfigError, match="unknown training option"):
        training_settings(CONFIG, {"allow_job_promote": True, "promote": "always"})


def test_the_operators_own_promote_always_still_applies_to_jobs():
    """training.promote: always in the config (the operator's choice) is kept for a job that
    does not ask for anything else."""
    config = load_config(None, environ={"SEGD_TRAINING__PROMOTE": "always"})
    assert training_settings(config, {"steps": 5}).promote == "always"
