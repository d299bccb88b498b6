"""worker.jobs: the RQ entry points and the worker's resident model."""

import shutil

import pytest

from common import registry
from tests.conftest import tiny_config
from worker import jobs


def test_the_runtime_reloads_the_model_when_models_current_changes(tmp_path, tiny_checkpoint):
    """Between jobs, a promotion (models/current → v1) is picked up without a restart, and the
    same model is reused while nothing changes."""
    config = tiny_config(tmp_path, SEGD_MODEL__CHECKPOINT=str(tiny_checkpoint))
    runtime = jobs.Runtime(config)
    first = runtime.segmenter()
    assert runtime.segmenter() is first and runtime.model_version == "base"

    models = config.paths.models
    (models / "v1").mkdir(parents=True)
    shutil.copy(tiny_checkpoint, models / "v1" / registry.WEIGHTS_FILE)
    registry.set_current(models, "v1")
    second = runtime.segmenter()
    assert second is not first
    assert runtime.model_version == "v1" and second.model.info.model_version == "v1"
    assert second.model.info.checkpoint == str(models / "v1" / registry.WEIGHTS_FILE)


def test_segment_refuses_arguments_that_are_not_job_ids_or_plain_names(tmp_path, tiny_checkpoint):
    """Job arguments are untrusted: a path instead of a job id, or a file name with a separator,
    is refused before any file is touched."""
    jobs.install_runtime(
        jobs.Runtime(tiny_config(tmp_path, SEGD_MODEL__CHECKPOINT=str(tiny_checkpoint)))
    )
    try:
        with pytest.raises(ValueError, match="not a segd job id"):
            jobs.segment("../../etc", "passwd")
        claim = tmp_path / "state" / "claimed" / ("a" * 32)
        claim.mkdir(parents=True)
        (claim / "claim.json").write_text(
            '{"job_id": "' + "a" * 32 + '", "stem": "x", "image": "x.jpg", "mask": null, '
            '"model_version": "base", "claimed_at": "t", "seq": 1}'
        )
        with pytest.raises(ValueError, match="not a plain file name"):
            jobs.segment("a" * 32, "../x.jpg")
    finally:
        jobs.install_runtime(None)
