"""How each vertebra's level was decided, as report.json's ``naming`` keeps it and every front end shows it.

The engine names the column by counting (:mod:`LumbarSegLib.inference.naming`): from the sacrum below, from a
rib-bearing (thoracic) vertebra above, from both, or - with neither in view - from the network's reading
alone ("unanchored"). report.json keeps that as ``{"levels": {"L1": "sacrum", ...}, "warnings": [...]}``;
the console, the Slicer status and metrics table and the web panel all read it through this module, so
they say the same. Reports written before the warnings were kept hold the flat ``{"L1": "sacrum"}``.
"""

from __future__ import annotations

from ..constants import TRANSITIONAL

HOWS = ("sacrum", "ribs", "both", "unanchored")
CHECK_LEVELS = "check the levels"


def naming_section(levels: dict, warnings) -> dict:
    """report.json's ``naming``: vertebra name -> how its level was decided, and what the count warned of."""
    return {"levels": {name: str(how) for name, how in levels.items()}, "warnings": [str(w) for w in warnings]}


def read_naming(report: dict | None) -> tuple[dict, list]:
    """(vertebra name -> how decided, warnings) from a report (either form; empty when it has none)."""
    section = (report or {}).get("naming") or {}
    if "levels" in section and isinstance(section["levels"], dict):
        return dict(section["levels"]), list(section.get("warnings") or [])
    return {k: v for k, v in section.items() if isinstance(v, str)}, []  # the older flat form


def level_check(how: str, warnings) -> str:
    """What a vertebra's name asks of the reader: the transitional-anatomy warning when the two counts differ
    by one level; "check the levels" when the names are unanchored or the count warned of anything else (a
    missed vertebra, counts further apart); "" when it was counted from an anchor without a doubt."""
    if any(TRANSITIONAL in w for w in warnings):
        return TRANSITIONAL
    if warnings or how == "unanchored":
        return CHECK_LEVELS
    return ""


def naming_rows(report: dict | None) -> dict:
    """{vertebra name: {"named_by": how, "level_check": text}} for the metrics tables."""
    levels, warnings = read_naming(report)
    return {name: {"named_by": how, "level_check": level_check(how, warnings)} for name, how in levels.items()}


def naming_line(report: dict | None) -> str:
    """'Levels named by: L1 sacrum, L2 sacrum (transitional anatomy: check the levels)'; "" without naming."""
    levels, warnings = read_naming(report)
    if not levels:
        return ""
    checks = {level_check(how, warnings) for how in levels.values()} - {""}
    check = TRANSITIONAL if TRANSITIONAL in checks else CHECK_LEVELS if checks else ""
    return ("Levels named by: " + ", ".join(f"{name} {how}" for name, how in levels.items())
            + (f" ({check})" if check else ""))
