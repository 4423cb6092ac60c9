"""How each level was decided, as report.json's ``naming`` keeps it and the console, the Slicer status and
metrics table and the web panel show it (:mod:`LumbarSegLib.results.naming_basis`)."""

from __future__ import annotations

from LumbarSegLib.constants import TRANSITIONAL
from LumbarSegLib.results.naming_basis import (CHECK_LEVELS, level_check, naming_line, naming_rows, naming_section,
                                               read_naming)

TRANSITIONAL_WARNING = (f"WARNING: {TRANSITIONAL} (a sixth lumbar or a sacralised fifth vertebra?): counting up from "
                        "the sacrum names them L2, L3, L4, L5; counting down from the ribs names them L1, L2, L3, L4.")


def test_the_report_section_keeps_each_basis_and_the_warnings_and_reads_back():
    section = naming_section({"L1": "sacrum", "L2": "sacrum"}, [TRANSITIONAL_WARNING])
    assert section == {"levels": {"L1": "sacrum", "L2": "sacrum"}, "warnings": [TRANSITIONAL_WARNING]}
    assert read_naming({"naming": section}) == ({"L1": "sacrum", "L2": "sacrum"}, [TRANSITIONAL_WARNING])
    # a report written before the warnings were kept: the flat form still reads
    assert read_naming({"naming": {"L3": "ribs"}}) == ({"L3": "ribs"}, [])
    assert read_naming({}) == ({}, []) and read_naming(None) == ({}, [])


def test_each_vertebra_says_what_to_check():
    assert level_check("sacrum", []) == "" and level_check("both", []) == ""
    assert level_check("unanchored", []) == CHECK_LEVELS  # counted from nothing: always to be checked
    assert level_check("sacrum", [TRANSITIONAL_WARNING]) == TRANSITIONAL
    assert level_check("ribs", ["WARNING: the centres of two neighbouring vertebrae are 70 mm apart ... Check the "
                                "levels."]) == CHECK_LEVELS
    rows = naming_rows({"naming": naming_section({"L4": "sacrum", "L5": "sacrum"}, [])})
    assert rows == {"L4": {"named_by": "sacrum", "level_check": ""}, "L5": {"named_by": "sacrum", "level_check": ""}}


def test_the_line_every_front_end_shows():
    assert naming_line({"naming": naming_section({"L1": "ribs", "L2": "ribs"}, [])}) == \
        "Levels named by: L1 ribs, L2 ribs"
    assert naming_line({"naming": naming_section({"L2": "sacrum"}, [TRANSITIONAL_WARNING])}) == \
        f"Levels named by: L2 sacrum ({TRANSITIONAL})"
    assert naming_line({"naming": naming_section({"L3": "unanchored"}, [])}).endswith(f"({CHECK_LEVELS})")
    assert naming_line({"naming": {}}) == ""


def test_the_console_prints_the_basis_and_the_warning(capsys):
    from LumbarSegLib.study.console import print_summary

    report = {"messages": [TRANSITIONAL_WARNING], "found": ["L2", "L3"], "measurements": {}, "outputs": {},
              "naming": naming_section({"L2": "sacrum", "L3": "sacrum"}, [TRANSITIONAL_WARNING])}
    print_summary(report)
    out = capsys.readouterr().out
    assert f"Levels named by: L2 sacrum, L3 sacrum ({TRANSITIONAL})" in out
