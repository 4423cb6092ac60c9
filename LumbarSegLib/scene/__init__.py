"""The scene layer: everything the Slicer module and the web app do to the MRML scene, as plain functions
taking the scene (or nodes).

Nothing here needs Qt or a running Slicer application: it works on a ``slicer.vtkMRMLScene`` from the
``slicer-core`` wheel as well as inside Slicer (``slicer.mrmlScene``), so the tests drive it headless.
``slicer.util`` helpers that silently use the global ``slicer.mrmlScene`` are avoided on purpose.

:mod:`.session` is the study session both front ends bind to (run, progress, cancel, the result into the
scene, re-runs keeping edits, exports, diagnostics). Below it, one module per concern: :mod:`.volumes` (volume nodes <-> SimpleITK), :mod:`.roi` (the crop box),
:mod:`.segments` (segmentation nodes), :mod:`.metrics_table`, :mod:`.export`, :mod:`.run` (put a result into
the scene), :mod:`.engine_job` (the command line in a subprocess on a volume node, via
:mod:`LumbarSegLib.study.engine_process`), :mod:`.provenance` (what ran; diagnostics), :mod:`.dependencies`
(PyTorch and the other packages inside Slicer), :mod:`.sample_data`, :mod:`.render` (offscreen pictures),
:mod:`.self_test` (the module's self-test bodies), :mod:`.scene` (shared helpers and the node
attributes this module writes), and for the Slicer module's shell: :mod:`.panel` (what its widget shows
and enables, and the tables it is wired by), :mod:`.module_logic` (its Logic's API over the session) and
:mod:`.reload` (its Reload). Import what you use from
the module that defines it; this package re-exports nothing.

Coordinate systems: Slicer nodes live in RAS, the engine (SimpleITK) in LPS. The two differ by a sign
flip of the first two axes, ``F = diag(-1, -1, 1)``. A volume node's IJK->RAS matrix ``M`` therefore
maps to a SimpleITK image with ``origin = F M[:3, 3]`` and ``direction * spacing = F M[:3, :3]``.
Arrays are (k, j, i) both in VTK image data and in ``sitk.GetArrayFromImage``, so voxels are copied
without any transposition. All results are placed in the volume node's own (local) coordinate frame
and under the same parent transform as the volume.

``import slicer`` inside this package is an absolute import: it always means 3D Slicer's (or
slicer-core's) ``slicer`` module, never this subpackage.
"""
