"""common.config: one YAML file, validated at load, overridden by SEGD_* variables."""

from pathlib import Path

import pytest

from common.config import Config, load_config
from common.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def test_the_shipped_config_yaml_is_valid_and_equals_the_defaults(tmp_path, monkeypatch):
    """The repository's config.yaml loads, and its values are the built-in defaults (read in a
    folder without a config.yaml: load_config(None) falls back to ./config.yaml)."""
    shipped = load_config(ROOT / "config.yaml", environ={})
    monkeypatch.chdir(tmp_path)
    defaults = load_config(None, environ={})
    assert defaults.source == "defaults"
    for section in Config.model_fields:
        if section in ("paths", "source", "training"):
            continue  # paths resolve against the file's folder vs the working folder
        assert getattr(shipped, section) == getattr(defaults, section), section
    assert shipped.training.model_copy(
        update={"datasets_root": None}
    ) == defaults.training.model_copy(update={"datasets_root": None})
    assert shipped.training.datasets_root == ROOT / "datasets"
    assert shipped.model.version == "sam2.1" and shipped.model.size == "small"
    assert shipped.sampling.points == 30 and shipped.model.image_size == 1024


def test_an_unknown_key_names_the_key_and_the_allowed_ones(tmp_path):
    """A typo is an error that names the file, the key and what is allowed."""
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  sise: tiny\n")
    with pytest.raises(
        ConfigError, match=r"c\.yaml: unknown key 'model\.sise'; allowed here: version, size"
    ):
        load_config(path, environ={})


def test_a_bad_value_names_the_key_the_value_and_what_is_allowed(tmp_path):
    """A bad value is an error with key, value and the allowed values."""
    path = tmp_path / "c.yaml"
    path.write_text("sampling:\n  mode: everywhere\n")
    with pytest.raises(
        ConfigError,
        match=r"sampling\.mode = 'everywhere': Input should be 'random', 'grid' or 'coverage'",
    ):
        load_config(path, environ={})
    path.write_text("model:\n  device: gpu7\n")
    with pytest.raises(ConfigError, match=r"model\.device = 'gpu7'.*auto, cpu, cuda or cuda:N"):
        load_config(path, environ={})


def test_environment_variables_override_keys_with_types(tmp_path):
    """SEGD_<SECTION>__<KEY> overrides the file; numbers become numbers, paths stay strings."""
    path = tmp_path / "c.yaml"
    path.write_text("sampling:\n  points: 10\n")
    cfg = load_config(
        path,
        environ={
            "SEGD_SAMPLING__POINTS": "64",
            "SEGD_MODEL__CHECKPOINT": "random",
            "SEGD_MODEL__MULTIMASK": "false",
            "SEGD_REDIS__URL": "unix:///tmp/r.sock",
        },
    )
    assert cfg.sampling.points == 64
    assert cfg.model.checkpoint == "random"
    assert cfg.model.multimask is False
    assert cfg.redis.url == "unix:///tmp/r.sock"
    assert "SEGD_SAMPLING__POINTS" in cfg.source


def test_an_unknown_environment_override_is_an_error_naming_the_variable():
    """A misspelt SEGD_ variable is not silently ignored."""
    with pytest.raises(ConfigError, match=r"SEGD_SAMPLING__PIONTS: unknown key sampling\.pionts"):
        load_config(None, environ={"SEGD_SAMPLING__PIONTS": "3"})
    with pytest.raises(ConfigError, match=r"SEGD_SAMPLIN__POINTS: unknown section 'samplin'"):
        load_config(None, environ={"SEGD_SAMPLIN__POINTS": "3"})
    with pytest.raises(ConfigError, match=r"sampling\.points = 0"):
        load_config(None, environ={"SEGD_SAMPLING__POINTS": "0"})


def test_relative_paths_resolve_against_the_config_files_folder(tmp_path, monkeypatch):
    """paths.* are relative to the config file, so services started elsewhere find the same folders."""
    folder = tmp_path / "site"
    folder.mkdir()
    (folder / "c.yaml").write_text("paths:\n  inbox: in\n  outbox: /abs/out\n")
    monkeypatch.chdir(tmp_path)
    cfg = load_config(folder / "c.yaml", environ={})
    assert cfg.paths.inbox == folder / "in"
    assert cfg.paths.outbox == Path("/abs/out")


def test_unreadable_or_malformed_files_are_clear_errors(tmp_path):
    """A missing file, invalid YAML or a non-mapping each give one clear message."""
    with pytest.raises(ConfigError, match="cannot read the config file"):
        load_config(tmp_path / "missing.yaml", environ={})
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad, environ={})
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(bad, environ={})
    bad.write_text("model: tiny\n")
    with pytest.raises(ConfigError, match="section 'model' must be a mapping"):
        load_config(bad, environ={})
