"""Volume nodes <-> SimpleITK images (LPS <-> RAS), oriented images for segmentations, the CT check."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from ..io.images import index_to_lps_matrix
from .scene import LPS_RAS, matrix_to_numpy, numpy_to_matrix, slicer_module, unique_name, vtk_module


def sitk_geometry_to_ijk_to_ras(image: sitk.Image) -> np.ndarray:
    ras = np.eye(4)
    ras[:3, :3] = LPS_RAS
    return ras @ index_to_lps_matrix(image)


def _set_sitk_geometry_from_ijk_to_ras(image: sitk.Image, ijk_to_ras: np.ndarray, name: str = "The volume") -> None:
    from ..errors import InputError

    lps = LPS_RAS @ ijk_to_ras[:3, :3]
    spacing = np.linalg.norm(lps, axis=0)
    # ITK refuses such a grid with a RuntimeError; say what is wrong with the volume instead.
    unit_axes = lps / np.where(spacing > 0, spacing, 1.0)
    if not np.all(np.isfinite(lps)) or np.any(spacing == 0) or abs(np.linalg.det(unit_axes)) < 1e-3:
        shown = ", ".join(f"{v:g}" for v in spacing)
        raise InputError(f"{name} has no valid voxel grid (spacing {shown} mm, or its axes do not span 3D space): "
                         f"a spacing of 0 or not a number cannot be segmented. Fix the spacing in Volumes > "
                         f"Volume Information, or load the CT again.")
    image.SetSpacing(spacing.tolist())
    image.SetDirection((lps / spacing).ravel().tolist())
    image.SetOrigin((LPS_RAS @ ijk_to_ras[:3, 3]).tolist())


def volume_ijk_to_ras(volume_node) -> np.ndarray:
    m = vtk_module().vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(m)
    return matrix_to_numpy(m)


def volume_lps_geometry(volume_node) -> tuple[tuple, tuple, tuple]:
    """(spacing, origin, direction) of the node's grid in LPS, as a SimpleITK image of it has them."""
    image = sitk.Image([1, 1, 1], sitk.sitkUInt8)
    _set_sitk_geometry_from_ijk_to_ras(image, volume_ijk_to_ras(volume_node))
    return image.GetSpacing(), image.GetOrigin(), image.GetDirection()


def volume_node_to_sitk(volume_node) -> sitk.Image:
    """Copy a scalar volume node into a SimpleITK image (LPS physical space, the node's local frame)."""
    from vtk.util import numpy_support

    from ..errors import InputError

    if volume_node is None:
        raise InputError("No input volume selected: choose a CT volume.")
    image_data = volume_node.GetImageData()
    if image_data is None or image_data.GetPointData().GetScalars() is None:
        raise InputError(f"Volume '{volume_node.GetName()}' has no voxel data.")
    dims = image_data.GetDimensions()
    if image_data.GetNumberOfScalarComponents() != 1:
        raise InputError(f"Volume '{volume_node.GetName()}' has {image_data.GetNumberOfScalarComponents()} "
                         "components per voxel; a single-component CT volume is needed.")
    array = numpy_support.vtk_to_numpy(image_data.GetPointData().GetScalars()).reshape(dims[::-1])
    image = sitk.GetImageFromArray(np.array(array, copy=True))
    _set_sitk_geometry_from_ijk_to_ras(image, volume_ijk_to_ras(volume_node), f"Volume '{volume_node.GetName()}'")
    return image


def _image_data_from_array(array: np.ndarray, vtk_class=None):
    from vtk.util import numpy_support

    vtk = vtk_module()
    array = np.ascontiguousarray(array)
    image_data = (vtk_class or vtk.vtkImageData)()
    image_data.SetDimensions(array.shape[2], array.shape[1], array.shape[0])
    vtk_array = numpy_support.numpy_to_vtk(array.ravel(), deep=True,
                                           array_type=numpy_support.get_vtk_array_type(array.dtype))
    image_data.GetPointData().SetScalars(vtk_array)
    return image_data


def sitk_to_volume_node(scene, image: sitk.Image, name: str = "CT", node_class: str = "vtkMRMLScalarVolumeNode",
                        node=None):
    """Add (or update) a volume node holding ``image``; its IJK->RAS comes from the LPS header."""
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError("Only 3D single-component images can be put into a volume node.")
    m = sitk_geometry_to_ijk_to_ras(image)
    if node is None:
        node = scene.AddNewNodeByClass(node_class, unique_name(scene, name))
    node.SetIJKToRASMatrix(numpy_to_matrix(m))
    node.SetAndObserveImageData(_image_data_from_array(sitk.GetArrayViewFromImage(image)))
    node.CreateDefaultDisplayNodes()
    return node


def sitk_to_oriented_image(image: sitk.Image):
    """A ``vtkOrientedImageData`` (RAS geometry) holding ``image``'s voxels."""
    slicer = slicer_module()
    oriented = _image_data_from_array(sitk.GetArrayViewFromImage(image), slicer.vtkOrientedImageData)
    oriented.SetImageToWorldMatrix(numpy_to_matrix(sitk_geometry_to_ijk_to_ras(image)))
    return oriented


def reference_oriented_image(volume_node):
    """An empty oriented image with ``volume_node``'s grid (extent and IJK->RAS), for resampling onto it."""
    slicer = slicer_module()
    ref = slicer.vtkOrientedImageData()
    ref.SetExtent(volume_node.GetImageData().GetExtent())
    m = vtk_module().vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(m)
    ref.SetImageToWorldMatrix(m)
    return ref


def label_array_to_sitk(array: np.ndarray, volume_node) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    _set_sitk_geometry_from_ijk_to_ras(image, volume_ijk_to_ras(volume_node))
    return image
