"""common.config.reference: docs/configuration.md is generated from the config model and kept equal to it."""

from __future__ import annotations

from pathlib import Path

from common.config import Config
from common.config.reference import default_text, render, sections

PAGE = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def test_the_configuration_page_is_what_the_model_generates():
    """docs/configuration.md equals the page rendered from the model: run `make docs` after a change."""
    assert PAGE.read_text(encoding="utf-8") == render(), (
        "docs/configuration.md is out of date with common/config/: run `make docs`"
    )


def test_every_key_is_on_the_page_with_its_default_and_a_description():
    """Each key of every section appears once, with its default, and no key lacks a description."""
    page = render()
    for name, model in sections():
        for key, info in model.model_fields.items():
            rows = [line for line in page.splitlines() if line.startswith(f"| `{name}.{key}` |")]
            assert len(rows) == 1, f"{name}.{key} is not on the page exactly once"
            assert info.description, f"{name}.{key} has no description in the config model"
            assert f"| {default_text(info.default)} |" in rows[0], rows[0]
    assert {name for name, _ in sections()} == set(Config.model_fields) - {"source"}
