"""The configuration reference page (docs/configuration.md), generated from the config model.

`python -m common.config.reference [FILE]` writes it (to stdout without FILE); `make docs` runs it
and a test fails when the page and the model disagree, so the page cannot drift.
"""

from __future__ import annotations

import sys
import typing
from pathlib import Path
from typing import Any

from annotated_types import Ge, Gt, Le, Lt, MultipleOf
from pydantic.fields import FieldInfo

from common.config import Config
from common.config.base import Section

INTRO = """# Configuration reference

<!-- Generated from common/config/ by `make docs` (python -m common.config.reference): do not edit
by hand; tests/common/test_config_reference.py fails when this page and the model disagree. -->

segd reads one YAML file (`--config FILE`, else `$SEGD_CONFIG`, else `./config.yaml` when it
exists, else the defaults below). It is validated when loaded: an unknown key or a bad value is an
error that names the key, the value and what is allowed. Every key can be overridden from the
environment as `SEGD_<SECTION>__<KEY>` (values parsed as YAML scalars), e.g.
`SEGD_MODEL__CHECKPOINT=random` or `SEGD_SAMPLING__POINTS=64`. `segd config` prints the effective
values. Relative paths in `paths` resolve against the config file's folder.
"""

_UNITS = ((2**30, "GiB"), (2**20, "MiB"))


def default_text(value: Any) -> str:
    """A default as a person would write it in the YAML file."""
    if value is None:
        return "`null`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, int) and value >= 2**20:
        for size, unit in _UNITS:
            if value % size == 0:
                return f"`{value}` ({value // size} {unit})"
    if isinstance(value, Path):
        return f"`{value}`"
    return f"`{value}`"


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return " / ".join(f"`{v}`" for v in typing.get_args(annotation))
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if args and len(args) < len(typing.get_args(annotation)):  # Optional[...]
        return f"{_type_name(args[0])} or `null`"
    names = {int: "integer", float: "number", bool: "`true` / `false`", str: "text", Path: "path"}
    return names.get(annotation, getattr(annotation, "__name__", str(annotation)))


def _allowed(info: FieldInfo) -> str:
    """The value's type with its bounds, e.g. `integer, >= 1, <= 4096`."""
    parts = [_type_name(info.annotation)]
    for item in info.metadata:
        if isinstance(item, Ge):
            parts.append(f">= {item.ge}")
        elif isinstance(item, Gt):
            parts.append(f"> {item.gt}")
        elif isinstance(item, Le):
            parts.append(f"<= {item.le}")
        elif isinstance(item, Lt):
            parts.append(f"< {item.lt}")
        elif isinstance(item, MultipleOf):
            parts.append(f"a multiple of {item.multiple_of}")
        elif getattr(item, "pattern", None):
            parts.append(f"matching `{item.pattern}`")
    return ", ".join(parts)


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:] if text else text


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def sections() -> list[tuple[str, type[Section]]]:
    """(name, section model) for every section of the config, in the file's order."""
    found = []
    for name, info in Config.model_fields.items():
        if isinstance(info.annotation, type) and issubclass(info.annotation, Section):
            found.append((name, info.annotation))
    return found


def render() -> str:
    """The whole page (Markdown)."""
    lines = [INTRO]
    for name, model in sections():
        lines += [f"## `{name}`", ""]
        doc = (model.__doc__ or "").strip()
        if doc:
            lines += [" ".join(doc.split()), ""]
        lines += ["| key | default | allowed | meaning |", "|---|---|---|---|"]
        for key, info in model.model_fields.items():
            lines.append(
                f"| `{name}.{key}` | {_cell(default_text(info.default))} | {_cell(_allowed(info))} "
                f"| {_cell(_sentence(info.description or ''))} |"
            )
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    page = render()
    if argv:
        Path(argv[0]).write_text(page, encoding="utf-8")
    else:
        sys.stdout.write(page)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
