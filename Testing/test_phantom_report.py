"""``lumbarseg phantom`` records the grid each case was drawn on (issue 15, item 17: it recorded
``shape: null``), and its help says what a default-size phantom costs."""

from __future__ import annotations

import json

import SimpleITK as sitk

from LumbarSegLib import cli


def test_report_records_each_drawn_grid(tmp_path, capsys):
    out = tmp_path / "ph"
    assert cli.main(["phantom", "-o", str(out), "--n", "2", "--seed", "4", "--shape", "32", "32", "40", "-q"]) == 0
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert report["shape"] == [32, 32, 40] and report["spacing_mm"] == "drawn per case"
    assert [c["seed"] for c in report["cases"]] == [4, 5]
    for case in report["cases"]:
        ct = sitk.ReadImage(str(out / case["ct"]))
        assert case["shape"] == list(ct.GetSize()) == [32, 32, 40]
        assert case["spacing_mm"] == [round(v, 4) for v in ct.GetSpacing()]
        assert all(v > 0 for v in case["spacing_mm"])


def test_help_says_what_a_default_phantom_costs(capsys):
    assert cli.main(["phantom", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "per default-size case" in text and "GiB" in text and "MB" in text
