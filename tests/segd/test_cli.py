"""The `segd` command, run as users run it (a subprocess of the installed console script)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from tests.conftest import TINY
from worker.image.outputs import RESULT_FILES

SEGD = str(Path(sys.executable).with_name("segd"))


def _run(args, cwd, **env):
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("SEGD_")}
    full_env.update(TINY, **env)
    return subprocess.run(
        [SEGD, *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=300
    )


def test_segment_with_a_region_mask_writes_all_five_files_inside_the_region(tmp_path, data_dir):
    """`segd segment IMAGE --mask MASK`: five files in outbox/<stem>/, segments only inside the
    region, RLEs that decode to exactly the index map, a uint16 original-size index.png."""
    image, mask = data_dir / "labpics_sample_image.jpg", data_dir / "labpics_sample_region_mask.png"
    proc = _run(
        ["segment", str(image), "--mask", str(mask)], tmp_path, SEGD_MODEL__CHECKPOINT="random"
    )
    assert proc.returncode == 0, proc.stderr
    folder = tmp_path / "outbox" / "labpics_sample_image"
    assert proc.stdout.strip() == str(folder)
    assert "RANDOM weights" in proc.stderr
    assert sorted(os.listdir(folder)) == sorted(RESULT_FILES)

    index = cv2.imread(str(folder / "index.png"), cv2.IMREAD_UNCHANGED)
    region = cv2.imread(str(mask), cv2.IMREAD_GRAYSCALE) > 0
    assert index.dtype == np.uint16 and index.shape == (678, 687)
    assert index.max() >= 1 and not index[~region].any()

    segments = json.loads((folder / "segments.json").read_text())["segments"]
    assert [s["id"] for s in segments] == list(range(1, index.max() + 1))
    rebuilt = np.zeros_like(index)
    for seg in segments:
        decoded = mask_utils.decode(
            {"size": seg["rle"]["size"], "counts": seg["rle"]["counts"].encode()}
        )
        assert decoded.sum() == seg["area"]
        rebuilt[decoded.astype(bool)] = seg["id"]
    np.testing.assert_array_equal(rebuilt, index)

    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["random_weights"] is True and manifest["model"]["checkpoint"] == "random"
    assert manifest["input"]["sha256"] and manifest["mask"]["name"] == mask.name
    assert manifest["settings"]["sampling"]["points"] == 30


def test_several_images_share_one_model_and_each_failure_gets_one_line(
    tmp_path, data_dir, tiny_checkpoint
):
    """Good and bad inputs in one call: results for the good, a line per bad file naming it and
    the reason, exit status 1; `<stem>.mask.png` beside an image is used as its region."""
    shutil.copy(data_dir / "labpics_sample_image.jpg", tmp_path / "vessel.jpg")
    shutil.copy(data_dir / "labpics_sample_region_mask.png", tmp_path / "vessel.mask.png")
    shutil.copy(data_dir / "groceries.jpg", tmp_path / "groceries.jpg")
    (tmp_path / "notes.png").write_text("this is not an image")
    truncated = (data_dir / "truck.jpg").read_bytes()
    (tmp_path / "truck.jpg").write_bytes(truncated[: len(truncated) // 2])
    names = ["vessel.jpg", "vessel.mask.png", "groceries.jpg", "notes.png", "truck.jpg"]
    proc = _run(
        ["segment", *names, "--out", "results"],
        tmp_path,
        SEGD_MODEL__CHECKPOINT=str(tiny_checkpoint),
    )
    assert proc.returncode == 1
    assert sorted(os.listdir(tmp_path / "results")) == ["groceries", "vessel"]
    failures = [line for line in proc.stderr.splitlines() if line.startswith("FAILED")]
    assert len(failures) == 2
    assert any("notes.png: not an image" in line for line in failures)
    assert any("truck.jpg: corrupt or truncated image" in line for line in failures)
    manifest = json.loads((tmp_path / "results" / "vessel" / "manifest.json").read_text())
    assert manifest["mask"]["name"] == "vessel.mask.png"
    assert manifest["random_weights"] is False
    index = cv2.imread(str(tmp_path / "results" / "vessel" / "index.png"), cv2.IMREAD_UNCHANGED)
    region = cv2.imread(str(tmp_path / "vessel.mask.png"), cv2.IMREAD_GRAYSCALE) > 0
    assert not index[~region].any()


def test_configuration_and_model_errors_exit_with_their_codes(tmp_path):
    """A bad config value exits 2 naming the key; a missing checkpoint exits 3 with the fix."""
    proc = _run(["segment", "x.jpg"], tmp_path, SEGD_SAMPLING__MODE="everywhere")
    assert proc.returncode == 2
    assert "sampling.mode = 'everywhere'" in proc.stderr
    proc = _run(["segment", "x.jpg"], tmp_path, SEGD_PATHS__MODELS=str(tmp_path / "m"))
    assert proc.returncode == 3
    assert "segd models fetch tiny --version sam2.1" in proc.stderr
    proc = _run(["segment", "a.jpg", "b.jpg", "--mask", "m.png"], tmp_path)
    assert proc.returncode == 1 and "--mask goes with a single image" in proc.stderr


def test_help_reads_well_for_every_command(tmp_path):
    """`segd --help` lists the commands; each subcommand's help describes its arguments."""
    top = _run(["--help"], tmp_path)
    assert top.returncode == 0 and "segment" in top.stdout and "models" in top.stdout
    seg = _run(["segment", "--help"], tmp_path)
    assert seg.returncode == 0 and "--mask MASK" in seg.stdout and "--out DIR" in seg.stdout
    fetch = _run(["models", "fetch", "--help"], tmp_path)
    assert fetch.returncode == 0 and "base_plus" in fetch.stdout and "resumes" in fetch.stdout


def test_segd_config_prints_the_effective_values(tmp_path):
    """`segd config` shows the merged configuration, overrides included."""
    proc = _run(["config"], tmp_path, SEGD_SAMPLING__POINTS="64")
    assert proc.returncode == 0
    assert "points: 64" in proc.stdout and "SEGD_SAMPLING__POINTS" in proc.stdout


def test_importing_worker_and_watcher_has_no_side_effects_and_watcher_skips_torch():
    """`import watcher` (and the light worker modules it shares) never import torch."""
    code = (
        "import sys, watcher, worker, common.config, common.errors, common.jobids; "
        "print('torch' in sys.modules, 'sam2' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
