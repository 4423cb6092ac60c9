"""Screening with the trabecular HU (:mod:`trabecular`): the published thresholds with their sources and
caveats, kept in this one place; the tube voltage and contrast read from a DICOM header; the console table.

The flag is L1's single-slice ROI mean against Pickhardt et al. 2013's thresholds; it is never given without
the caveats (120 kVp non-contrast calibration, contrast reads higher, HU is not a DXA T-score, research use).
"""

from __future__ import annotations

import math

import SimpleITK as sitk

from ..constants import RESEARCH_NOTICE

SOURCES = {
    "Pickhardt 2013": "Pickhardt PJ, Pooler BD, Lauder T, del Rio AM, Bruce RJ, Binkley N. Opportunistic "
                      "screening for osteoporosis using abdominal computed tomography scans obtained for other "
                      "indications. Ann Intern Med. 2013;158(8):588-595.",
    "Jang 2019": "Jang S, Graffy PM, Ziemlewicz TJ, Lee SJ, Summers RM, Pickhardt PJ. Opportunistic "
                 "osteoporosis screening at routine abdominal and thoracic CT: normative L1 trabecular "
                 "attenuation values in more than 20 000 adults. Radiology. 2019;291(2):360-367.",
}
# (upper bound HU inclusive, category, what the source says); L1, single-slice ROI mean.
THRESHOLDS = (
    (110.0, "osteoporosis likely",
     "L1 <= 110 HU: more than 90 % specific for DXA-defined osteoporosis (Pickhardt 2013)"),
    (160.0, "indeterminate",
     "110-160 HU: between the specific and the sensitive threshold (Pickhardt 2013)"),
    (math.inf, "osteoporosis unlikely",
     "L1 > 160 HU: the 160 HU threshold is 90 % sensitive for DXA-defined osteoporosis (Pickhardt 2013)"),
)
SCREENING_VERTEBRA = "L1"
NORMATIVE_VALUES = "normative L1 values by age and sex: Jang 2019"
CAVEATS = (
    "The thresholds were derived at 120 kVp on non-contrast CT; another tube voltage changes bone HU.",
    "Contrast-enhanced phases read about 10-20 HU higher than non-contrast CT of the same bone.",
    "A CT attenuation in HU is not a DXA T-score; a flag suggests, it does not diagnose, osteoporosis.",
    "Scanner calibration differs between scanners and over time; no phantom calibration was applied.",
    RESEARCH_NOTICE + ".",
)
STANDARD_KVP = 120.0


def screening_category(hu: float) -> str:
    for upper, category, _ in THRESHOLDS:
        if hu <= upper:
            return category
    return THRESHOLDS[-1][1]


# --------------------------------------------------------------------------------------------------
# Acquisition: kVp and contrast from the DICOM header
# --------------------------------------------------------------------------------------------------

def acquisition_from_dicom(files) -> dict:
    """kVp (0018,0060) and contrast agent (0018,0010) from the first file of a DICOM series (None: no file).

    ``contrast`` is "given" (an agent is named), "not recorded" (the Contrast/Bolus module is only written
    when contrast was used, but anonymisers also remove it) or "unknown" (no DICOM header at all)."""
    kvp = agent = None
    read = False
    if files:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(files[0]))
        shown = sitk.ProcessObject.GetGlobalWarningDisplay()
        sitk.ProcessObject.SetGlobalWarningDisplay(False)
        try:
            reader.ReadImageInformation()
            read = True
            if reader.HasMetaDataKey("0018|0060"):
                try:
                    kvp = float(reader.GetMetaData("0018|0060").strip())
                except ValueError:
                    kvp = None
            if reader.HasMetaDataKey("0018|0010"):
                agent = reader.GetMetaData("0018|0010").strip() or None
        except RuntimeError:
            pass
        finally:
            sitk.ProcessObject.SetGlobalWarningDisplay(shown)
    contrast = "given" if agent else "not recorded" if read else "unknown"
    return {"source": "DICOM header" if read else "none (not a DICOM series)", "kvp": kvp,
            "contrast": contrast, "contrast_agent": agent}


def acquisition_notes(acquisition: dict) -> list[str]:
    notes = []
    kvp = acquisition.get("kvp")
    if kvp is None:
        notes.append("Tube voltage unknown (no kVp in a DICOM header): the thresholds assume 120 kVp.")
    elif abs(kvp - STANDARD_KVP) > 0.5:
        notes.append(f"The CT was acquired at {kvp:g} kVp; the thresholds were derived at 120 kVp and bone HU "
                     f"differ at other voltages.")
    contrast = acquisition.get("contrast")
    if contrast == "given":
        notes.append(f"Contrast was given ({acquisition.get('contrast_agent')}): expect about 10-20 HU more than "
                     f"non-contrast CT; the thresholds are for non-contrast CT.")
    elif contrast == "not recorded":
        notes.append("No contrast agent is recorded in the DICOM header (probably non-contrast; anonymisation "
                     "can remove it).")
    else:
        notes.append("Contrast unknown (no DICOM header): a contrast phase reads about 10-20 HU higher.")
    return notes



def screening(l1_single_slice, acquisition: dict, core_roi: str, single_slice_roi: str) -> dict:
    """The study-level block of report.json: the flag from :data:`THRESHOLDS` for the screening vertebra's
    single-slice ROI (``trabecular.RoiResult`` or None when it was not found), sources and caveats."""
    flag = {"vertebra": SCREENING_VERTEBRA, "measurement": "mean HU of the single-slice ROI", "hu": None,
            "category": None, "reason": None}
    if l1_single_slice is None:
        flag["reason"] = f"{SCREENING_VERTEBRA} was not found"
    elif l1_single_slice.reason:
        flag["reason"] = l1_single_slice.reason
    else:
        flag["hu"] = l1_single_slice.mean
        flag["category"] = screening_category(l1_single_slice.mean)
    return {"screening": flag,
            "thresholds": [{"up_to_hu": None if math.isinf(u) else u, "category": c, "basis": b}
                           for u, c, b in THRESHOLDS],
            "normative_values": NORMATIVE_VALUES, "sources": dict(SOURCES),
            "acquisition": {**acquisition, "notes": acquisition_notes(acquisition)},
            "caveats": list(CAVEATS), "core_roi": core_roi, "single_slice_roi": single_slice_roi}


# --------------------------------------------------------------------------------------------------
# Output for people
# --------------------------------------------------------------------------------------------------

def _fmt(v, digits=0) -> str:
    return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.{digits}f}"


def format_table(measurements: dict[str, dict], bone_density: dict | None = None) -> str:
    """Console table: per vertebra the core's median/mean/SD/voxels and the single-slice mean, or why not."""
    rows = [(n, m) for n, m in measurements.items() if "trabecular_hu" in m]
    if not rows:
        return ""
    lines = ["Trabecular bone (HU)   core: median    mean    SD  voxels  |  single slice: mean  area mm2",
             "-" * 92]
    notes = []
    for name, m in rows:
        core, ss = m["trabecular_hu"], m["trabecular_hu_single_slice"]
        if core["reason"]:
            lines.append(f"{name:8}  no value ({core['reason']})")
            continue
        ss_text = f"{_fmt(ss['mean']):>19}  {_fmt(ss.get('area_mm2')):>8}" if not ss["reason"] else \
            f"{'-':>19}  {'-':>8}"
        if ss["reason"]:
            notes.append(f"{name} single slice: {ss['reason']}")
        lines.append(f"{name:8}  {_fmt(core['median']):>18}  {_fmt(core['mean']):>6}  {_fmt(core['sd']):>4}  "
                     f"{core['voxels']:>6}  |{ss_text}")
    lines += [f"  {n}" for n in notes]
    if bone_density:
        flag = bone_density["screening"]
        rule = "L1 <= 110 HU osteoporosis likely, 110-160 indeterminate, > 160 unlikely (Pickhardt 2013)"
        if flag["category"]:
            lines.append(f"Screening flag ({flag['vertebra']}, {flag['measurement']} {flag['hu']:.0f} HU): "
                         f"{flag['category']}. Thresholds: {rule}.")
        else:
            lines.append(f"Screening flag: none ({flag['reason']}). Thresholds: {rule}.")
        lines += [f"  {n}" for n in bone_density["acquisition"]["notes"]]
        lines.append("  " + " ".join(bone_density["caveats"]))
    return "\n".join(lines)
