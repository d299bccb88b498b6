"""common.names: which names are accepted, how they are shown, the frame-name rule."""

from __future__ import annotations

from common import retry_waits
from common.names import is_frame_name, name_problem, shown


def test_shown_escapes_control_characters_and_undecodable_bytes():
    """A newline, an escape and a surrogate-escaped byte are shown escaped, never raw."""
    assert shown("a\nb\x1b.jpg") == "a\\nb\\x1b.jpg"
    assert shown("bad\udcff.jpg") == "bad\\xff.jpg"
    assert shown("样品 01.jpg") == "样品 01.jpg"


def test_name_problem_names_the_rule_broken():
    """Leading dots, '..', '/' and names over 250 bytes are refused with their reason."""
    assert name_problem("样品 01.jpg") is None
    assert name_problem(".x.jpg") == (
        "the file name starts with '.' (a hidden or temporary file); rename it"
    )
    assert name_problem("..") == "the file name is empty, '.', '..' or holds '/'; rename it"
    assert name_problem("é" * 126) == "the file name is longer than 250 bytes; rename it"


def test_frame_names_are_integers_with_an_image_suffix():
    """00012.jpg is a frame; 12a.jpg, 12.mask.png and 12.txt are not."""
    assert is_frame_name("00012.jpg") and is_frame_name("7.PNG")
    assert not any(is_frame_name(n) for n in ("12a.jpg", "12.mask.png", "12.txt"))


def test_transient_waits_double_from_2_s_up_to_the_cap_and_cover_the_horizon():
    """2, 4, 8, then the cap, until their sum reaches the horizon; none for a horizon of 0."""
    assert retry_waits.intervals(30, 8) == [2, 4, 8, 8, 8]
    assert sum(retry_waits.intervals(3600, 60)) >= 3600
    assert retry_waits.intervals(0, 60) == []
