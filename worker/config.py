"""segd's configuration: one YAML file, validated when loaded, overridable from the environment.

Light on purpose (standard library, PyYAML and pydantic only) so the watcher can import it.

Precedence, lowest to highest: defaults < the YAML file < `SEGD_<SECTION>__<KEY>` environment
variables (e.g. `SEGD_MODEL__CHECKPOINT=random`, `SEGD_SAMPLING__POINTS=64`). Values from the
environment are parsed as YAML scalars, so `64` is an int and `true` a bool. Relative paths in
`paths` resolve against the folder of the config file (or the working folder without one).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from worker.errors import ConfigError

ENV_PREFIX = "SEGD_"
ENV_CONFIG_FILE = "SEGD_CONFIG"  # the config file to load when --config is not given
DEFAULT_CONFIG_FILE = "config.yaml"

ModelVersion = Literal["sam2", "sam2.1"]
ModelSize = Literal["tiny", "small", "base_plus", "large"]


class _Section(BaseModel):
    # Unknown keys are errors (a typo must not be silently ignored); sections are immutable.
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class PathsConfig(_Section):
    inbox: Path = Path("inbox")
    outbox: Path = Path("outbox")
    state: Path = Path("state")
    models: Path = Path("models")


class RedisConfig(_Section):
    # None: `segd up` starts a private redis-server on a unix socket under paths.state.
    # Otherwise redis://[:password@]host:port/db, rediss://... (TLS) or unix:///path/redis.sock.
    url: str | None = None

    @field_validator("url")
    @classmethod
    def _scheme(cls, url: str | None) -> str | None:
        if url is not None and not re.match(r"^(redis|rediss|unix)://", url):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return url


class ModelConfig(_Section):
    version: ModelVersion = "sam2.1"
    size: ModelSize = "small"
    # None: the official file under paths.models/base/ (see `segd models fetch`);
    # a path: an official checkpoint or a seed-tutorial state dict; "random": random weights.
    checkpoint: str | None = None
    # A mirror of Meta's checkpoint folder for `segd models fetch` and the first start of `segd up`
    # (e.g. an internal file server); None = Meta's own URLs.
    download_url: str | None = None
    # Expected sha256 of the checkpoint file; checked when set.
    checkpoint_sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    image_size: int = Field(default=1024, ge=128, le=4096, multiple_of=32)
    device: str = "auto"
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    # True: keep the best-scoring of SAM2's three masks per point; False: its single-mask output.
    multimask: bool = True
    # Logit threshold that turns a mask into pixels.
    mask_threshold: float = 0.0
    # Prompts per decoder call. None = auto: 4 on CPU (each prompt carries ~12 MB of activations;
    # small batches stay in cache and decode 1.7x faster, same results), 64 on CUDA.
    decoder_batch: int | None = Field(default=None, ge=1, le=4096)

    @field_validator("device")
    @classmethod
    def _device(cls, device: str) -> str:
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", device):
            raise ValueError("must be auto, cpu, cuda or cuda:N")
        return device


class InputsConfig(_Section):
    # Decompression-bomb cap: images (and masks) above this many pixels are refused.
    max_pixels: int = Field(default=64_000_000, ge=1)
    max_file_bytes: int = Field(default=512 * 2**20, ge=1)


class SamplingConfig(_Section):
    # random: uniform points in the region (seeded, no repeats); grid: an even lattice clipped to
    # the region; coverage: decode in small batches and put new points where nothing is covered yet.
    mode: Literal["random", "grid", "coverage"] = "coverage"
    # Points per image (random, grid) or the point budget (coverage).
    points: int = Field(default=30, ge=1, le=4096)
    seed: int = 0
    # coverage mode stops once this fraction of the region is covered by accepted masks.
    coverage_target: float = Field(default=0.95, gt=0.0, le=1.0)
    # coverage mode: prompts decoded per round.
    batch: int = Field(default=4, ge=1, le=1024)
    # coverage mode also stops when a round (whose prompts all lie in uncovered spots) adds less
    # than this fraction of the region: the model finds nothing more there. 0 disables.
    min_gain: float = Field(default=0.01, ge=0.0, le=1.0)


class StitchingConfig(_Section):
    # A mask is skipped when more than this fraction of it is already claimed (the seed's rule).
    overlap_threshold: float = Field(default=0.15, ge=0.0, le=1.0)
    # Masks whose predicted IoU or stability is below these are dropped before stitching.
    min_score: float = Field(default=0.0, ge=0.0, le=1.0)
    min_stability: float = Field(default=0.0, ge=0.0, le=1.0)
    # Segments that would claim fewer pixels than this are dropped.
    min_area: int = Field(default=16, ge=0)


class OutputsConfig(_Section):
    overlay_alpha: float = Field(default=0.5, ge=0.0, le=1.0)
    jpeg_quality: int = Field(default=90, ge=1, le=100)
    # 0 (none, fastest) .. 9 (smallest); 1 is nearly as small as 9 for label maps.
    png_compression: int = Field(default=1, ge=0, le=9)


class WatcherConfig(_Section):
    # Polling instead of inotify: needed on network file systems (inotify misses remote writes).
    polling: bool = False
    poll_interval_s: float = Field(default=1.0, gt=0)
    # A file is complete when unchanged this long after its writer closed it or renamed it in...
    settle_s: float = Field(default=0.2, ge=0)
    # ...or, with no such event (polling, rescans), when unchanged this long.
    settle_scan_s: float = Field(default=2.0, ge=0)
    # Full rescans of the inbox (events can be dropped) and reconciliation of state/ with Redis.
    rescan_interval_s: float = Field(default=10.0, gt=0)
    reconcile_interval_s: float = Field(default=30.0, gt=0)
    # A `.part` file untouched this long is moved to state/failed/ as abandoned.
    stale_part_s: float = Field(default=86400.0, gt=0)


class WorkerConfig(_Section):
    # RQ job timeout: above the slowest image on the slowest worker (SimpleWorker sends no
    # heartbeat during a job).
    job_timeout_s: int = Field(default=900, ge=10)
    # Retries after an unexpected error (bad inputs are never retried).
    retries: int = Field(default=2, ge=0, le=10)


class TrainingConfig(_Section):
    # Labelled folders (`images/` + `labels/` [+ `val/`], or LabPics' `Simple/Train/...`) must
    # lie under this folder; a dataset named by a relative path is looked up here.
    datasets_root: Path = Path("datasets")
    # The model a run starts from: "current" (what the workers use), "base", or a version name.
    base: str = "current"
    steps: int = Field(default=1000, ge=1)
    batch_images: int = Field(default=4, ge=1)  # images per step, each with its own features
    instances_per_image: int = Field(default=8, ge=1)
    points_per_instance: int = Field(default=1, ge=1)  # positive points per prompt (service: 1)
    negative_points: int = Field(default=0, ge=0)  # background points added to each prompt
    box_probability: float = Field(default=0.0, ge=0, le=1)  # share of prompts that get a box
    train_encoder: bool = False  # also fine-tune the image encoder (more memory, slower)
    lr: float = Field(default=1e-4, gt=0)  # prompt encoder and mask decoder
    encoder_lr: float = Field(default=1e-5, gt=0)
    weight_decay: float = Field(default=0.01, ge=0)
    warmup_steps: int = Field(default=50, ge=0)  # linear warm-up, then cosine decay to 0
    grad_clip: float = Field(default=1.0, gt=0)  # max global gradient norm
    val_every: int = Field(default=100, ge=1)  # steps between validations
    val_fraction: float = Field(default=0.2, gt=0, lt=1)  # held out when there is no val/
    val_max_images: int = Field(default=100, ge=1)
    patience: int = Field(default=5, ge=0)  # validations without improvement; 0 = never stop early
    checkpoint_every: int = Field(default=50, ge=1)  # steps between resumable checkpoints
    seed: int = 0
    # Make the new version current: if it beats the current model on the run's validation set,
    # always, or never (then `segd models promote VERSION`).
    promote: Literal["if_better", "always", "never"] = "if_better"
    job_timeout_s: int = Field(default=4 * 3600, ge=60)
    retries: int = Field(default=1, ge=0, le=10)  # a crashed run resumes from its checkpoint

    @field_validator("base")
    @classmethod
    def _base(cls, base: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", base):
            raise ValueError('must be "current", "base" or a model version name')
        return base


class MetricsConfig(_Section):
    # The Prometheus exporter (`segd metrics`, and `segd up`): localhost only unless changed.
    host: str = "127.0.0.1"
    port: int = Field(default=9470, ge=0, le=65535)


class HealthConfig(_Section):
    # `segd status --check`: fewer live workers on the segment queue than this is a problem...
    expected_workers: int = Field(default=1, ge=0)
    # ...and so is a queue whose oldest job waited this long while no job of it ended in as long
    # and none is running within its timeout (see worker/health.py).
    stuck_after_s: float = Field(default=1800.0, ge=0)


class VideoConfig(_Section):
    # Only the first N frames of each video are segmented and tracked (None: all of them).
    max_frames: int | None = Field(default=None, ge=1)
    # Every K frames, sample points where no tracked object is and add what they find as new
    # objects with new ids (0: only the first frame's objects are tracked).
    reseed_every: int = Field(default=30, ge=0)
    # No new objects are added once this many are tracked (each costs time on every frame).
    max_objects: int = Field(default=100, ge=1, le=65535)
    # Tracker state (memories, masks) lives in CPU memory on CUDA hosts: GPU memory stays flat.
    offload_state_to_cpu: bool = True
    # Frame rate of color.mp4 for a folder of frames (video files keep their own).
    folder_fps: float = Field(default=25.0, gt=0)
    # Video files larger than this are refused (frames are still limited by inputs.max_pixels).
    max_file_bytes: int = Field(default=16 * 2**30, ge=1)
    # RQ timeout of a video job: above the longest video's runtime (no heartbeat mid-job).
    job_timeout_s: int = Field(default=14400, ge=10)


class Config(_Section):
    paths: PathsConfig = PathsConfig()
    redis: RedisConfig = RedisConfig()
    model: ModelConfig = ModelConfig()
    inputs: InputsConfig = InputsConfig()
    sampling: SamplingConfig = SamplingConfig()
    stitching: StitchingConfig = StitchingConfig()
    outputs: OutputsConfig = OutputsConfig()
    watcher: WatcherConfig = WatcherConfig()
    worker: WorkerConfig = WorkerConfig()
    training: TrainingConfig = TrainingConfig()
    metrics: MetricsConfig = MetricsConfig()
    health: HealthConfig = HealthConfig()

    video: VideoConfig = VideoConfig()

    # Where the values came from, for error messages and manifests (not a config key).
    source: str = Field(default="defaults", exclude=True)


# The training settings one run may override (the rest of `training` belongs to the operator).
TRAINING_JOB_OPTIONS = frozenset(TrainingConfig.model_fields) - {
    "datasets_root",
    "job_timeout_s",
    "retries",
}


def training_settings(config: Config, options: dict[str, Any]) -> TrainingConfig:
    """`config.training` with one run's options applied and validated.

    Raises ConfigError naming each unknown or invalid option and what is allowed.
    """
    unknown = sorted(set(options) - TRAINING_JOB_OPTIONS)
    if unknown:
        raise ConfigError(
            f"unknown training option(s) {', '.join(unknown)}; "
            f"allowed: {', '.join(sorted(TRAINING_JOB_OPTIONS))}"
        )
    try:
        return TrainingConfig(**{**config.training.model_dump(), **options})
    except ValidationError as exc:
        lines = [f"{_describe(err, 'training option')}" for err in exc.errors()]
        raise ConfigError("invalid training option:\n  " + "\n  ".join(lines)) from None


def _allowed_keys(section: str | None) -> list[str]:
    if section is None:
        return [k for k in Config.model_fields if k != "source"]
    field = Config.model_fields.get(section)
    return list(field.annotation.model_fields) if field else []


def _describe(error: dict, source: str) -> str:
    """One line per pydantic error: `source: key = value: what is wrong`."""
    loc = [str(part) for part in error["loc"]]
    key = ".".join(loc)
    if error["type"] == "extra_forbidden":
        section = loc[0] if len(loc) > 1 else None
        allowed = ", ".join(_allowed_keys(section))
        return f"{source}: unknown key {key!r}; allowed here: {allowed}"
    value = error.get("input")
    return f"{source}: {key} = {value!r}: {error['msg']}"


def _parse_env_value(section: str, key: str, raw: str) -> Any:
    """Parse an environment value as a YAML scalar, except for string-typed keys (paths, urls)."""
    if raw.strip().lower() in ("", "null", "none", "~"):
        return None
    annotation = str(Config.model_fields[section].annotation.model_fields[key].annotation)
    if "str" in annotation or "Path" in annotation:
        return raw
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


def _env_overrides(environ: dict[str, str]) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """Turn `SEGD_SECTION__KEY=value` variables into a nested dict; returns it and the names used."""
    overrides: dict[str, dict[str, Any]] = {}
    names: list[str] = []
    for name, raw in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        section, _, key = name[len(ENV_PREFIX) :].partition("__")
        section, key = section.lower(), key.lower()
        if section not in _allowed_keys(None):
            raise ConfigError(
                f"environment variable {name}: unknown section {section!r}; "
                f"allowed: {', '.join(_allowed_keys(None))}"
            )
        if key not in _allowed_keys(section):
            raise ConfigError(
                f"environment variable {name}: unknown key {section}.{key}; "
                f"allowed: {', '.join(_allowed_keys(section))}"
            )
        value = _parse_env_value(section, key, raw)
        overrides.setdefault(section, {})[key] = value
        names.append(name)
    return overrides, names


def load_config(
    path: str | os.PathLike | None = None, environ: dict[str, str] | None = None
) -> Config:
    """Load and validate the configuration.

    `path`: the YAML file; None means $SEGD_CONFIG, else ./config.yaml when it exists, else the
    defaults. `environ`: the environment to read overrides from (default: os.environ).
    Raises ConfigError naming the file or variable, the key, the value and what is allowed.
    """
    environ = dict(os.environ if environ is None else environ)
    if path is None:
        path = environ.get(ENV_CONFIG_FILE) or (
            DEFAULT_CONFIG_FILE if Path(DEFAULT_CONFIG_FILE).is_file() else None
        )

    data: dict[str, Any] = {}
    base = Path.cwd()
    source = "defaults"
    if path is not None:
        path = Path(path)
        source = str(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read the config file ({exc.strerror})") from exc
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: must be a mapping of sections (paths:, model:, ...)")
        data = loaded
        base = path.resolve().parent

    overrides, names = _env_overrides(environ)
    for section, values in overrides.items():
        current = data.get(section)
        if current is not None and not isinstance(current, dict):
            raise ConfigError(f"{source}: section {section!r} must be a mapping")
        data[section] = {**(current or {}), **values}
    if names:
        source = f"{source} + {', '.join(names)}"

    for section, values in data.items():
        if section in _allowed_keys(None) and values is not None and not isinstance(values, dict):
            raise ConfigError(
                f"{source}: section {section!r} must be a mapping of keys, got {values!r}"
            )
        if values is None:
            data[section] = {}
    try:
        config = Config(**data, source=source)
    except ValidationError as exc:
        lines = [_describe(err, source) for err in exc.errors()]
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(lines)) from None
    resolved = {
        key: value if value.is_absolute() else base / value
        for key, value in config.paths.model_dump().items()
    }
    root = config.training.datasets_root
    training = config.training.model_copy(
        update={"datasets_root": root if root.is_absolute() else base / root}
    )
    return config.model_copy(
        update={"paths": config.paths.model_copy(update=resolved), "training": training}
    )
