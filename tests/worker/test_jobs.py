"""worker.jobs: the RQ entry points and the worker's resident model."""

import shutil

import pytest

from common import attempts, registry, state
from tests.conftest import tiny_config
from tests.service_helpers import picture
from worker import jobs
from worker.image import placement


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


def test_a_rerun_after_a_death_mid_write_removes_the_half_written_result_it_left(tmp_path):
    """A worker killed while writing a result leaves its hidden temp folder in the outbox (named
    for the claim). When the claim runs again, its job removes that folder before it segments:
    no half-written results pile up in the outbox after crashes. Temp folders of other claims
    and of `segd segment` are left alone."""
    config = tiny_config(tmp_path, SEGD_SAMPLING__MODE="random", SEGD_SAMPLING__POINTS="8")
    job_id, seq = "b" * 32, 1765000000123456789
    claim_dir = tmp_path / "state" / "claimed" / job_id
    claim_dir.mkdir(parents=True)
    (claim_dir / "visit.jpg").write_bytes(picture(3))
    made = state.Claim(job_id, "visit", "visit.jpg", None, "base", "t", seq, folder="site a/day 1")
    state.write_claim(claim_dir, made)
    attempts.begin(claim_dir, "gpu-0")  # a run that never ended: its worker died

    parent = tmp_path / "outbox" / "site a" / "day 1"
    dead = placement.temp_folder(parent / "visit", seq)
    other = placement.temp_folder(parent / "visit", seq + 1)  # another claim's, being written
    segment_cli = placement.temp_folder(parent / "visit")
    for folder in (dead, other, segment_cli):
        folder.mkdir(parents=True)
        (folder / "index.png").write_bytes(b"half")
    assert dead.name.startswith(f".tmp-{seq}-")

    jobs.install_runtime(jobs.Runtime(config))
    try:
        outcome = jobs.segment(job_id, "visit.jpg")
    finally:
        jobs.install_runtime(None)
    assert outcome["status"] == "done"
    assert sorted(p.name for p in parent.iterdir()) == sorted(
        ["visit", other.name, segment_cli.name]
    )
    assert (parent / "visit" / "manifest.json").is_file()
