"""segd's configuration: one YAML file, validated when loaded, overridable from the environment.

Light on purpose (standard library, PyYAML and pydantic only) so the watcher can import it.

Precedence, lowest to highest: defaults < the YAML file < `SEGD_<SECTION>__<KEY>` environment
variables (e.g. `SEGD_MODEL__CHECKPOINT=random`, `SEGD_SAMPLING__POINTS=64`). Values from the
environment are parsed as YAML scalars, so `64` is an int and `true` a bool. Relative paths in
`paths` resolve against the folder of the config file (or the working folder without one).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError

from common.config.base import Section
from common.config.pipeline import (
    InputsConfig,
    ModelConfig,
    OutputsConfig,
    SamplingConfig,
    StitchingConfig,
    TrainingConfig,
    VideoConfig,
)
from common.config.service import (
    HealthConfig,
    MetricsConfig,
    PathsConfig,
    RedisConfig,
    WatcherConfig,
    WebConfig,
    WorkerConfig,
)
from common.errors import ConfigError
from common.redact import redacted_url

__all__ = [
    "Config",
    "ConfigError",
    "HealthConfig",
    "InputsConfig",
    "MetricsConfig",
    "ModelConfig",
    "OutputsConfig",
    "PathsConfig",
    "RedisConfig",
    "SamplingConfig",
    "StitchingConfig",
    "TrainingConfig",
    "VideoConfig",
    "WatcherConfig",
    "WebConfig",
    "WorkerConfig",
    "load_config",
    "training_settings",
]

ENV_PREFIX = "SEGD_"
ENV_CONFIG_FILE = "SEGD_CONFIG"  # the config file to load when --config is not given
DEFAULT_CONFIG_FILE = "config.yaml"


class Config(Section):
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
    web: WebConfig = WebConfig()

    video: VideoConfig = VideoConfig()

    # Where the values came from, for error messages and manifests (not a config key).
    source: str = Field(default="defaults", exclude=True)


# The training settings one run may override (the rest of `training` belongs to the operator).
TRAINING_JOB_OPTIONS = frozenset(TrainingConfig.model_fields) - {
    "datasets_root",
    "job_timeout_s",
    "retries",
    "allow_job_promote",
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
        settings = TrainingConfig(**{**config.training.model_dump(), **options})
    except ValidationError as exc:
        lines = [f"{_describe(err, 'training option')}" for err in exc.errors()]
        raise ConfigError("invalid training option:\n  " + "\n  ".join(lines)) from None
    training = config.training
    escalates = options.get("promote") == "always" and training.promote != "always"
    if escalates and not training.allow_job_promote:
        # Anyone who can write to the train queue could otherwise replace the served model.
        raise ConfigError(
            "invalid training option:\n  training option: promote = 'always': a job may not "
            "force promotion (training.allow_job_promote is false); use if_better or never, "
            "then `segd models promote VERSION`, or set training.allow_job_promote: true"
        )
    return settings


def _allowed_keys(section: str | None) -> list[str]:
    if section is None:
        return [k for k in Config.model_fields if k != "source"]
    field = Config.model_fields.get(section)
    return list(field.annotation.model_fields) if field and field.annotation else []


def _describe(error: Any, source: str) -> str:
    """One line per pydantic error: `source: key = value: what is wrong`."""
    loc = [str(part) for part in error["loc"]]
    key = ".".join(loc)
    if error["type"] == "extra_forbidden":
        section = loc[0] if len(loc) > 1 else None
        allowed = ", ".join(_allowed_keys(section))
        return f"{source}: unknown key {key!r}; allowed here: {allowed}"
    value = error.get("input")
    if key == "redis.url" and isinstance(value, str):
        value = redacted_url(value)  # it may hold the Redis password
    return f"{source}: {key} = {value!r}: {error['msg']}"


def _parse_env_value(section: str, key: str, raw: str) -> Any:
    """Parse an environment value as a YAML scalar, except for string-typed keys (paths, urls)."""
    if raw.strip().lower() in ("", "null", "none", "~"):
        return None
    section_model: Any = Config.model_fields[section].annotation
    annotation = str(section_model.model_fields[key].annotation)
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
