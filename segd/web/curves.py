"""A training run's validation curve as an SVG drawn on the server (no script, nothing fetched).

The points come from the model card: `validation.history`, a list of {"step": int, "miou": float}
(step 0 is the model before training), written by worker/training/run.py.
"""

from __future__ import annotations

from html import escape

WIDTH, HEIGHT = 520, 220
# Inside the SVG, so it looks the same inline in a page and opened on its own.
STYLE = (
    ".c-grid{stroke:#e5e7eb}.c-axis{stroke:#6b7280}"
    ".c-tick,.c-label,.c-note{font:11px system-ui,sans-serif;fill:#4b5563}"
    ".c-line{fill:none;stroke:#2563eb;stroke-width:2}.c-point{fill:#2563eb}"
    ".c-best{fill:#d97706}.c-before{stroke:#9ca3af;stroke-dasharray:4 3}"
)
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 48, 16, 14, 34


def points(history: list) -> list[tuple[int, float]]:
    """The (step, mIoU) pairs of a card's history, by step; malformed entries skipped."""
    found = []
    for item in history or []:
        if not isinstance(item, dict):
            continue
        step, miou = item.get("step"), item.get("miou")
        if isinstance(step, int | float) and isinstance(miou, int | float):
            found.append((int(step), float(miou)))
    return sorted(found)


def _ticks(low: float, high: float, count: int = 4) -> list[float]:
    if high <= low:
        return [low]
    return [low + (high - low) * i / count for i in range(count + 1)]


def validation_svg(history: list, title: str = "validation mIoU") -> str:
    """An SVG (as text) of validation mIoU against training step; a note when there are no points."""
    data = points(history)
    label = escape(title)
    head = (
        f'<svg xmlns="http://www.w3.org/2000/svg" class="curve" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'width="{WIDTH}" height="{HEIGHT}" role="img" aria-label="{label}">'
        f"<title>{label}</title><style>{STYLE}</style>"
    )
    if not data:
        return (
            head + f'<text x="{WIDTH / 2}" y="{HEIGHT / 2}" text-anchor="middle" class="c-note">'
            "no validation history in this card</text></svg>"
        )
    steps = [s for s, _ in data]
    scores = [m for _, m in data]
    x_low, x_high = min(steps), max(steps)
    y_low = max(0.0, min(scores) - 0.05)
    y_high = min(1.0, max(scores) + 0.05)
    if y_high - y_low < 0.1:
        y_low, y_high = max(0.0, y_low - 0.05), min(1.0, y_high + 0.05)
    plot_w = WIDTH - MARGIN_LEFT - MARGIN_RIGHT
    plot_h = HEIGHT - MARGIN_TOP - MARGIN_BOTTOM

    def x(step: float) -> float:
        span = (x_high - x_low) or 1
        return MARGIN_LEFT + (step - x_low) / span * plot_w

    def y(miou: float) -> float:
        span = (y_high - y_low) or 1
        return MARGIN_TOP + (1 - (miou - y_low) / span) * plot_h

    parts = [head]
    bottom = MARGIN_TOP + plot_h
    for tick in _ticks(y_low, y_high):
        parts.append(
            f'<line class="c-grid" x1="{MARGIN_LEFT}" x2="{MARGIN_LEFT + plot_w}" '
            f'y1="{y(tick):.1f}" y2="{y(tick):.1f}"/>'
            f'<text class="c-tick" x="{MARGIN_LEFT - 6}" y="{y(tick) + 4:.1f}" '
            f'text-anchor="end">{tick:.2f}</text>'
        )
    for tick in _ticks(x_low, x_high) if x_high > x_low else [x_low]:
        parts.append(
            f'<text class="c-tick" x="{x(tick):.1f}" y="{bottom + 16}" '
            f'text-anchor="middle">{tick:.0f}</text>'
        )
    parts.append(
        f'<line class="c-axis" x1="{MARGIN_LEFT}" x2="{MARGIN_LEFT}" y1="{MARGIN_TOP}" y2="{bottom}"/>'
        f'<line class="c-axis" x1="{MARGIN_LEFT}" x2="{MARGIN_LEFT + plot_w}" y1="{bottom}" y2="{bottom}"/>'
        f'<text class="c-label" x="{MARGIN_LEFT + plot_w / 2}" y="{HEIGHT - 4}" '
        'text-anchor="middle">training step</text>'
    )
    before = scores[0]
    parts.append(
        f'<line class="c-before" x1="{MARGIN_LEFT}" x2="{MARGIN_LEFT + plot_w}" '
        f'y1="{y(before):.1f}" y2="{y(before):.1f}"><title>before training: {before:.4f}</title></line>'
    )
    line = " ".join(f"{x(s):.1f},{y(m):.1f}" for s, m in data)
    parts.append(f'<polyline class="c-line" points="{line}"/>')
    best = max(scores)
    for s, m in data:
        cls = "c-point c-best" if m == best else "c-point"
        parts.append(
            f'<circle class="{cls}" cx="{x(s):.1f}" cy="{y(m):.1f}" r="3.5">'
            f"<title>step {s}: mIoU {m:.4f}</title></circle>"
        )
    parts.append("</svg>")
    return "".join(parts)
