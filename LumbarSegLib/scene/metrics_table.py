"""Per-vertebra metrics (volume, HU, centroid; DSC... against a reference) in a ``vtkMRMLTableNode``."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from ..constants import RESEARCH_NOTICE
from .scene import ATTR_NOTICE, ATTR_ROLE, LPS_RAS, place_in_study, unique_name, vtk_module
from .segments import segmentation_to_label_array, vertebra_label_from_name
from .volumes import volume_node_to_sitk


MEASURE_COLUMNS = [  # (key in metrics.measure, column title, unit)
    ("volume_ml", "Volume", "mL"),
    ("height_mm", "Height", "mm"),
    ("mean_hu", "Mean HU", "HU"),
    ("median_hu", "Median HU", "HU"),
]
TRABECULAR_COLUMNS = [  # (key in trabecular_rois.trabecular_rows, flattened; column title, unit)
    ("trabecular_hu_median", "Trabecular HU", "HU"),
    ("trabecular_hu_mean", "Trabecular mean HU", "HU"),
    ("trabecular_hu_sd", "Trabecular SD", "HU"),
    ("trabecular_hu_voxels", "Trabecular ROI voxels", ""),
    ("trabecular_hu_single_slice_mean", "Single-slice HU", "HU"),
    ("trabecular_note", "Trabecular note", ""),
]
NAMING_COLUMNS = [  # (key in results.naming_basis.naming_rows; column title, unit): how the level was decided
    ("named_by", "Named by", ""),
    ("level_check", "Level check", ""),
]
STRING_COLUMNS = {"segment", "trabecular_note", "named_by", "level_check"}
COMPARE_COLUMNS = [  # (key in metrics.compare, column title, unit)
    ("DSC", "DSC", ""),
    ("FND", "FND", ""),
    ("FPD", "FPD", ""),
    ("MSD", "MSD", "mm"),
    ("ASD", "ASD", "mm"),
    ("HD95", "HD95", "mm"),
]


def compute_metrics(segmentation_node, volume_node, reference_node=None, trabecular: bool = True) -> dict:
    """{"L1": {volume_ml, mean_hu, centroid_ras, ..., trabecular_hu_median, ..., dsc, ...}} using
    :mod:`LumbarSegLib.measures`; the trabecular HU is measured in the ROI segments of the node where there
    are any (:func:`trabecular_rois.trabecular_rows`), so the table follows a ROI the reader moved."""
    from ..measures import agreement, measurements

    image = volume_node_to_sitk(volume_node)
    ct = sitk.GetArrayViewFromImage(image)
    labels = segmentation_to_label_array(segmentation_node, volume_node)
    rows = rows_from_measurements(measurements.measure(labels, ct, image))
    if trabecular:
        add_trabecular_rows(rows, segmentation_node, volume_node)
    if reference_node is not None:
        reference = segmentation_to_label_array(reference_node, volume_node)
        spacing_zyx = tuple(image.GetSpacing()[::-1])
        compared = agreement.compare(labels, reference, spacing_zyx)
        for name, values in compared.items():
            rows.setdefault(name, {}).update(values)
    return {name: rows[name] for name in sorted(rows, key=lambda n: vertebra_label_from_name(n) or 99)}


def rows_from_measurements(measured: dict) -> dict:
    """:func:`metrics.measure` output (also ``report.json``'s ``measurements``) as table rows: adds the
    centroid in RAS, orders L1..L5."""
    rows = {}
    for name, values in measured.items():
        row = dict(values)
        if row.get("centroid_mm") is not None:
            row["centroid_ras"] = tuple((LPS_RAS @ np.asarray(row["centroid_mm"], float)).tolist())
        rows[name] = row
    return {name: rows[name] for name in sorted(rows, key=lambda n: vertebra_label_from_name(n) or 99)}


def add_trabecular_rows(rows: dict, segmentation_node, volume_node) -> dict:
    """Adds to ``rows`` the trabecular HU measured in the node's ROI segments
    (:func:`trabecular_rois.trabecular_rows`), so the table follows a ROI the reader moved."""
    from .trabecular_rois import trabecular_rows

    for name, entries in trabecular_rows(segmentation_node, volume_node).items():
        row = rows.setdefault(name, {})
        notes = []
        for key, entry in entries.items():
            row.update({f"{key}_{k}": v for k, v in entry.items() if k in ("median", "mean", "sd", "voxels")})
            if entry.get("reason"):
                notes.append(("single slice: " if key.endswith("single_slice") else "") + entry["reason"])
            elif entry.get("source") == "segment" and key == "trabecular_hu":
                notes.append("from the ROI segment")
        row["trabecular_note"] = "; ".join(notes)
    return rows


def add_naming_rows(rows: dict, report: dict | None) -> dict:
    """Adds to ``rows`` how each vertebra's level was decided, from report.json's ``naming``
    (:func:`results.naming_basis.naming_rows`: "Named by" sacrum / ribs / both / unanchored, and the
    "Level check" the count asks for). Only vertebrae in ``rows`` get it: a segment the reader deleted
    stays deleted."""
    from ..results.naming_basis import naming_rows

    for name, values in naming_rows(report).items():
        if name in rows:
            rows[name].update(values)
    return rows


def plausibility_warnings(segmentation_node, volume_node) -> list[str]:
    """Warnings for vertebrae whose volume or height is outside the anatomical ranges
    (:func:`metrics.plausibility_warnings`; e.g. a slice spacing written wrongly in the header)."""
    from ..measures.measurements import plausibility_warnings as check

    return check(compute_metrics(segmentation_node, volume_node, trabecular=False))


def fill_metrics_table(scene, rows: dict, table_node=None, name="Lumbar metrics", volume_node=None):
    """Write ``compute_metrics`` rows into a ``vtkMRMLTableNode`` (one row per vertebra), placed in the
    study of ``volume_node`` when given."""
    vtk = vtk_module()
    if table_node is None:
        table_node = scene.AddNewNodeByClass("vtkMRMLTableNode", unique_name(scene, name))
    table_node.SetAttribute(ATTR_ROLE, "metrics")
    table_node.SetAttribute(ATTR_NOTICE, RESEARCH_NOTICE)
    if volume_node is not None:
        place_in_study(table_node, volume_node)
    table = table_node.GetTable()
    was = table_node.StartModify()
    table_node.RemoveAllColumns()
    has_compare = any(k in row for row in rows.values() for k, _, _ in COMPARE_COLUMNS)
    columns = [("segment", "Segment", "")]
    columns += [c for c in MEASURE_COLUMNS if any(c[0] in row for row in rows.values())]
    columns += [("centroid_r", "Centroid R", "mm"), ("centroid_a", "Centroid A", "mm"),
                ("centroid_s", "Centroid S", "mm")]
    columns += [c for c in TRABECULAR_COLUMNS if any(c[0] in row for row in rows.values())]
    columns += [c for c in NAMING_COLUMNS if any(c[0] in row for row in rows.values())]
    if has_compare:
        columns += COMPARE_COLUMNS
    arrays = []
    for key, title, unit in columns:
        array = vtk.vtkStringArray() if key in STRING_COLUMNS else vtk.vtkDoubleArray()
        array.SetName(title)
        table.AddColumn(array)
        arrays.append(array)
    for name, row in rows.items():
        ras = row.get("centroid_ras") or (float("nan"),) * 3
        values = {"segment": name, "centroid_r": ras[0], "centroid_a": ras[1], "centroid_s": ras[2]}
        for key, _, _ in columns:
            if key not in values:
                v = row.get(key)
                values[key] = str(v or "") if key in STRING_COLUMNS else float("nan") if v is None else float(v)
        for (key, _, _), array in zip(columns, arrays):
            array.InsertNextValue(values[key])
    for key, title, unit in columns:
        if unit:
            table_node.SetColumnUnitLabel(title, unit)
    table_node.EndModify(was)
    table_node.Modified()
    return table_node


def table_to_dict(table_node) -> dict:
    """{segment: {column title: value}} read back from a metrics table (for tests and display)."""
    table = table_node.GetTable()
    names = [table.GetColumn(c).GetName() for c in range(table.GetNumberOfColumns())]
    out = {}
    for r in range(table.GetNumberOfRows()):
        row = {names[c]: table.GetValue(r, c).ToString() if table.GetColumn(c).IsA("vtkStringArray")
               else table.GetValue(r, c).ToDouble() for c in range(len(names))}
        out[row[names[0]]] = row
    return out
