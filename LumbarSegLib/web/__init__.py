"""``lumbarseg serve``: LumbarSeg in a web browser, on 3D Slicer's own core served by trame-slicer.

The web app runs in its own virtual environment (``.venv-web``, made by ``bash tools/install.sh --web``):
trame-slicer 2.0.0 needs slicer-core 5.11 (its compiled ``slicer-layer-dm`` is built against it), while the
rest of the project is pinned to slicer-core 5.13. Nothing outside this package imports trame.

Modules, lowest first (imports point down: this package uses the engine and :mod:`LumbarSegLib.scene`,
never the other way round):

- :mod:`.uploads` - what a browser may send: size limit, accepted file types, a server-chosen file name.
- :mod:`.session` - everything a button does, as plain functions and one :class:`~.session.StudySession`
  on a MRML scene; no trame, so the tests drive it headless (also on the main environment's slicer-core).
- :mod:`.app` - the page: trame-slicer's views and segment editor plus the LumbarSeg panel, thin.
- :mod:`.cli` - the ``serve`` subcommand's arguments and its checks (loopback by default, warning otherwise).
"""
