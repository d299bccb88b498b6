"""segd.web.curves: a card's validation history drawn as SVG on the server."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

from segd.web.curves import points, validation_svg


def test_each_validation_is_a_point_and_the_line_rises_with_the_score():
    """One circle per history entry, ordered by step; a higher mIoU is drawn higher (smaller y);
    the best point is marked; the SVG is well-formed XML."""
    history = [{"step": 40, "miou": 0.7}, {"step": 0, "miou": 0.2}, {"step": 20, "miou": 0.5}]
    svg = validation_svg(history)
    root = ET.fromstring(svg)
    ns = "{http://www.w3.org/2000/svg}"
    circles = root.findall(f"{ns}circle")
    assert len(circles) == 3
    ys = [float(c.get("cy")) for c in circles]
    xs = [float(c.get("cx")) for c in circles]
    assert xs == sorted(xs) and ys == sorted(ys, reverse=True)
    assert "c-best" in circles[-1].get("class")
    assert [c.find(f"{ns}title").text for c in circles] == [
        "step 0: mIoU 0.2000",
        "step 20: mIoU 0.5000",
        "step 40: mIoU 0.7000",
    ]
    assert not re.search(r"https?://(?!www\.w3\.org/2000/svg)", svg)  # nothing fetched


def test_malformed_entries_are_skipped_and_an_empty_history_says_so():
    """Entries without a numeric step and mIoU are ignored; no points gives a note, not a plot."""
    assert points([{"step": 1, "miou": 0.5}, {"step": "x"}, None, {"miou": 1}]) == [(1, 0.5)]
    empty = validation_svg([])
    ET.fromstring(empty)
    assert "no validation history in this card" in empty and "<circle" not in empty
    single = validation_svg([{"step": 0, "miou": 0.4}])
    assert single.count("<circle") == 1
