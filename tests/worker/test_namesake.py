"""worker.service.namesake: what a restarted worker does with the job its dead predecessor ran."""

from common import attempts, state
from tests.conftest import tiny_config
from worker.image import placement
from worker.service import namesake


def test_an_input_failed_for_its_deaths_leaves_no_half_written_result_behind(tmp_path):
    """The last allowed death came while the result was being written: the restarted namesake
    fails the input (no run of it comes again) and removes the temp folder that run left in the
    mirrored outbox folder, and only that claim's."""
    config = tiny_config(tmp_path, SEGD_WORKER__RETRIES="1")
    job_id, seq = "c" * 32, 1765000000987654321
    claim_dir = tmp_path / "state" / "claimed" / job_id
    claim_dir.mkdir(parents=True)
    (claim_dir / "huge.jpg").write_bytes(b"jpeg")
    made = state.Claim(job_id, "huge", "huge.jpg", None, "base", "t", seq, folder="scans")
    state.write_claim(claim_dir, made)
    for _ in range(2):  # two runs that never ended: more than worker.retries = 1
        attempts.begin(claim_dir, "gpu-0")
    parent = placement.mirror(tmp_path / "outbox", "scans")
    dead, other = (
        placement.temp_folder(parent / "huge", seq),
        placement.temp_folder(parent / "x", 7),
    )
    for folder in (dead, other):
        folder.mkdir()
        (folder / "index.png").write_bytes(b"half")

    namesake.requeue(None, config, job_id, "gpu-0 died during job " + job_id)

    assert not claim_dir.exists()
    (failed,) = (tmp_path / "state" / "failed").iterdir()
    assert "the worker died while segmenting it 2 times" in (failed / "error.json").read_text()
    assert [p.name for p in parent.iterdir()] == [other.name]
