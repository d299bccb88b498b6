"""A worker's side of a claim, before its job runs: find it, file it under the model version
that will actually run, count the attempt on disk, and check its bytes against its claim.

Job ids hash the model version current when the watcher claimed the input; the worker runs the
version current when the job starts. When they differ (a promotion or a rollback in between), the
claim is re-keyed to the id of the version that runs (renamed to `claimed/<new id>/`), so the id in
the manifest, in done/ and in the watcher's duplicate check all name the model that made the result.
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
from collections.abc import Callable
from pathlib import Path

from common import attempts, jobids, state
from common.config import Config
from common.durable import durable_rename
from common.errors import BadInput

log = logging.getLogger("segd.worker")
CHANGED_REASON = (
    "changed after it was claimed (its bytes no longer match the sha256 its job id was made "
    "from): its writer was probably still writing; drop the complete file again"
)


@dataclasses.dataclass(frozen=True)
class Started:
    """A claim whose job runs now: `job_id` (after re-keying), its folder and its claim."""

    job_id: str
    folder: Path
    claim: state.Claim


def _sha(path: Path) -> str:
    return jobids.folder_sha256(path) if path.is_dir() else jobids.file_sha256(path)


def start(
    config: Config,
    job_id: str,
    model_version: str,
    worker: str,
    after_deaths: Callable[[state.Claim], None] | None = None,
) -> Started | dict:
    """Prepare claim `job_id` to run with `model_version` by `worker`. Returns the Started claim,
    or the job's result when it must not run: already handled, a duplicate of a claim queued under
    the version that runs, or an input the worker died on more than `worker.retries` times
    (moved to state/failed/). `after_deaths(claim)` runs first when earlier runs of the claim
    died (to clear what they left half-written; no run of it is live then)."""
    state_dir = config.paths.state
    claim_dir = state.folder(state_dir, state.CLAIMED, job_id)
    if not claim_dir.is_dir():
        for kind in (state.DONE, state.FAILED):
            if state.folder(state_dir, kind, job_id).is_dir():
                return {"status": kind, "note": "already handled"}
        raise FileNotFoundError(f"job {job_id}: no claim in {claim_dir.parent}")
    claim = state.read_claim(claim_dir)
    died = attempts.deaths(claim_dir)
    if died and after_deaths is not None:
        after_deaths(claim)
    reason = attempts.exhausted_reason(died, config.worker.retries)
    if reason is not None:
        state.fail(state_dir, job_id, reason)
        log.error("failed %s: %s", claim.image, reason)
        return {"status": "failed", "reason": reason}
    if claim.model_version != model_version:
        rekeyed = _rekey(config, claim_dir, claim, model_version)
        if isinstance(rekeyed, dict):
            return rekeyed
        claim_dir, claim = rekeyed
    attempts.begin(claim_dir, worker)
    return Started(claim.job_id, claim_dir, claim)


def _rekey(
    config: Config, claim_dir: Path, claim: state.Claim, model_version: str
) -> tuple[Path, state.Claim] | dict:
    """Rename the claim to the job id of `model_version`; a dict result when that job is queued
    already (this copy is kept in its duplicates/)."""
    image_sha = claim.image_sha256 or _sha(claim_dir / claim.image)
    mask_sha = claim.mask_sha256 or (_sha(claim_dir / claim.mask) if claim.mask else None)
    new_id = jobids.job_id(image_sha, mask_sha, model_version)
    target = state.folder(config.paths.state, state.CLAIMED, new_id)
    if target.is_dir():
        spare = target / state.DUPLICATES / secrets.token_hex(8)
        spare.parent.mkdir(exist_ok=True)
        durable_rename(claim_dir, spare)
        log.info(
            "%s: model %s is current now, and job %s segments the same input with it; kept in %s",
            claim.image,
            model_version,
            new_id,
            spare,
        )
        return {"status": "duplicate", "of": new_id}
    new = dataclasses.replace(
        claim,
        job_id=new_id,
        model_version=model_version,
        image_sha256=image_sha,
        mask_sha256=mask_sha,
        run_as=claim.run_as or claim.job_id,
    )
    state.write_claim(claim_dir, new)  # first: the folder's new name comes with its record
    durable_rename(claim_dir, target)
    log.info(
        "%s was claimed under model %s but %s is current now: job %s is now job %s",
        claim.image,
        claim.model_version,
        model_version,
        claim.job_id,
        new_id,
    )
    return target, new


def check_unchanged(path: Path, expected_sha256: str | None) -> None:
    """BadInput when the claimed input's bytes are not those its job id was made from."""
    if expected_sha256 is not None and _sha(path) != expected_sha256:
        raise BadInput(path, CHANGED_REASON)
