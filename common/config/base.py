"""The base of every config section: unknown keys are errors, values are immutable."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    # Unknown keys are errors (a typo must not be silently ignored); sections are immutable.
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)
