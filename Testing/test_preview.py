"""The PNG preview: file names in any script are legible in its title, not boxes."""

from __future__ import annotations

import warnings

import pytest

from LumbarSegLib.results import preview

TITLE = "LumbarSeg: 患者_腰椎 ひらがな - found L1, L2"


def test_cjk_file_name_in_the_title_renders_without_missing_glyphs(tmp_path, synthetic_ct):
    """matplotlib's default font has no Chinese or Japanese glyphs and draws boxes (warning 'Glyph ...
    missing from font'); the title gets an installed font that has them, or readable escapes."""
    ct, labels = synthetic_ct
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        path = preview.write_preview(ct, labels, tmp_path / "p.png", title=TITLE)
    assert path.stat().st_size > 1000
    missing = [str(w.message) for w in caught if "missing from font" in str(w.message)]
    assert missing == []
    families, text = preview.title_fonts(TITLE)
    assert text == TITLE or "\\u60a3" in text  # the glyphs are drawn, or escaped - never boxes


def test_an_installed_cjk_font_is_found_even_when_matplotlib_cache_predates_it():
    from matplotlib import font_manager, ft2font

    has_cjk = [p for p in font_manager.findSystemFonts()
               if {ord("患"), ord("ひ")} <= set(ft2font.FT2Font(p).get_charmap())]
    if not has_cjk:
        pytest.skip("no font with Chinese and Japanese glyphs is installed (tools/install.sh installs one)")
    families, text = preview.title_fonts(TITLE)
    assert text == TITLE and len(families) == 2
