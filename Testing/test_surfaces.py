"""STL meshes: in LPS mm on top of the label map, closed, outward-facing, with the right volume."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import vtk
from vtk.util import numpy_support

from LumbarSegLib.results import surfaces

SPACING = (0.8, 0.9, 2.0)
ORIGIN = (10.0, -20.0, 30.0)


@pytest.fixture(scope="module")
def labels():
    arr = np.zeros((30, 40, 50), np.uint8)  # (z, y, x)
    z, y, x = np.mgrid[:30, :40, :50]
    arr[(z - 15) ** 2 + (y - 20) ** 2 + (x - 25) ** 2 <= 100] = 1    # ball
    arr[20:30, 5:15, 5:15] = 2                                        # box touching the top border
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(SPACING)
    img.SetOrigin(ORIGIN)
    img.SetDirection((-1, 0, 0, 0, -1, 0, 0, 0, 1))  # LPS->RAS-like flip: a mirroring index->LPS map
    return img


@pytest.fixture(scope="module")
def written(labels, tmp_path_factory):
    return surfaces.write_stl(labels, tmp_path_factory.mktemp("stl"))


def _read(path):
    reader = vtk.vtkSTLReader()
    reader.SetFileName(str(path))
    reader.Update()
    return reader.GetOutput()


def _physical_bounds(img, label):
    idx = np.argwhere(sitk.GetArrayViewFromImage(img) == label)[:, ::-1]  # (x, y, z)
    corners = [img.TransformContinuousIndexToPhysicalPoint(c.astype(float).tolist()) for c in (idx.min(0), idx.max(0))]
    corners = np.asarray(corners)
    return corners.min(0), corners.max(0)


def test_one_file_per_present_vertebra(written):
    assert sorted(written) == ["L1", "L2"]
    assert written["L1"].name == "L1.stl"
    header = written["L1"].read_bytes()[:80]
    assert header[:9] == b"SPACE=LPS"  # Slicer reads this header as the coordinate system
    assert b"LumbarSeg L1 vertebra (mm), research use only, not a medical device" in header


def test_slicer_reads_the_files_as_lps(written):
    """The header carries more than the coordinate system (the research notice): Slicer's own model reader
    must still take it as LPS and show the surface where the STL says (RAS = LPS with x, y negated)."""
    slicer = pytest.importorskip("slicer")
    scene = slicer.vtkMRMLScene()
    model = scene.AddNewNodeByClass("vtkMRMLModelNode")
    storage = slicer.vtkMRMLModelStorageNode()
    scene.AddNode(storage)
    storage.SetFileName(str(written["L1"]))
    assert storage.ReadData(model)
    assert storage.GetCoordinateSystem() == slicer.vtkMRMLStorageNode.CoordinateSystemLPS
    lps = np.asarray(_read(written["L1"]).GetBounds())
    np.testing.assert_allclose(model.GetPolyData().GetBounds(), [-lps[1], -lps[0], -lps[3], -lps[2], *lps[4:]],
                               atol=1e-4)


@pytest.mark.parametrize("name, label", [("L1", 1), ("L2", 2)])
def test_bounds_closed_volume_orientation(written, labels, name, label):
    poly = _read(written[name])
    assert poly.GetNumberOfCells() > 100
    b = np.asarray(poly.GetBounds()).reshape(3, 2)
    lo, hi = _physical_bounds(labels, label)
    # Voxel-centre bounds vs. the surface half a voxel outside them (less after smoothing): within 1 voxel.
    np.testing.assert_allclose(b[:, 0], lo, atol=max(SPACING))
    np.testing.assert_allclose(b[:, 1], hi, atol=max(SPACING))

    edges = vtk.vtkFeatureEdges()
    edges.SetInputData(poly)
    edges.BoundaryEdgesOn()
    edges.NonManifoldEdgesOn()
    edges.FeatureEdgesOff()
    edges.ManifoldEdgesOff()
    edges.Update()
    assert edges.GetOutput().GetNumberOfCells() == 0, "surface has holes"

    voxel_volume = int((sitk.GetArrayViewFromImage(labels) == label).sum()) * np.prod(SPACING)
    mass = vtk.vtkMassProperties()
    mass.SetInputData(poly)
    mass.Update()
    assert mass.GetVolume() == pytest.approx(voxel_volume, rel=0.06)

    # Signed volume by the divergence theorem: positive means normals point outwards.
    pts = numpy_support.vtk_to_numpy(poly.GetPoints().GetData()).astype(float)
    tri = numpy_support.vtk_to_numpy(poly.GetPolys().GetConnectivityArray()).reshape(-1, 3)
    signed = np.einsum("ij,ij->i", pts[tri[:, 0]], np.cross(pts[tri[:, 1]], pts[tri[:, 2]])).sum() / 6.0
    assert signed == pytest.approx(voxel_volume, rel=0.06)


def test_no_labels_no_files(tmp_path):
    img = sitk.Image([5, 5, 5], sitk.sitkUInt8)
    assert surfaces.write_stl(img, tmp_path) == {}


def test_unsmoothed_surface_is_exactly_halfway(tmp_path):
    arr = np.zeros((8, 8, 8), np.uint8)
    arr[2:6, 2:6, 2:6] = 3
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((1.0, 2.0, 3.0))
    paths = surfaces.write_stl(img, tmp_path, smoothing=0)
    b = np.asarray(_read(paths["L3"]).GetBounds()).reshape(3, 2)
    np.testing.assert_allclose(b[:, 0], np.array([1.5, 1.5, 1.5]) * (1, 2, 3), atol=1e-5)
    np.testing.assert_allclose(b[:, 1], np.array([5.5, 5.5, 5.5]) * (1, 2, 3), atol=1e-5)


@pytest.mark.parametrize("smoothing", [5, -0.1, 1.01])
def test_smoothing_outside_0_to_1_is_refused(labels, tmp_path, smoothing):
    from LumbarSegLib.errors import InputError

    with pytest.raises(InputError, match="outside 0..1"):
        surfaces.write_stl(labels, tmp_path / "stl", smoothing=smoothing)
    assert not (tmp_path / "stl").exists()


def test_a_mesh_with_non_finite_vertices_is_never_written(labels, tmp_path):
    """Smoothing 5 (outside the accepted range) makes VTK's windowed-sinc filter return NaN vertices."""
    from LumbarSegLib.errors import LumbarSegError

    array = sitk.GetArrayViewFromImage(labels)
    poly = surfaces.label_surface(array, 1, labels, smoothing=5)
    points = numpy_support.vtk_to_numpy(poly.GetPoints().GetData())
    assert not np.isfinite(points).all()  # the broken mesh the STL writer used to write
    with pytest.raises(LumbarSegError, match="not finite"):
        surfaces.write_surface(poly, tmp_path / "L1.stl", "L1")
    assert not (tmp_path / "L1.stl").exists()
    good = surfaces.label_surface(array, 1, labels, smoothing=1.0)
    assert surfaces.write_surface(good, tmp_path / "L1.stl", "L1").stat().st_size > 84
