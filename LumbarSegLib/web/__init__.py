"""``lumbarseg serve``: LumbarSeg in a web browser, on 3D Slicer's own core served by trame-slicer.

The web app runs in the project's one environment (``.venv``, made by ``bash tools/install.sh``; the pip
extra ``web``): trame-slicer 2.0.0 needs slicer-core 5.11 (its compiled ``slicer-layer-dm`` is built against
it), and the whole project is on that core. Nothing outside this package imports trame, so a plain
``pip install -e .`` runs the engine without it.

Modules, lowest first (imports point down: this package uses the engine and :mod:`LumbarSegLib.scene`,
never the other way round):

- :mod:`.transport` - the most one page may make the server hold: one message of one upload piece (wslink
  bounded before trame starts its websocket server).
- :mod:`.uploads` - what a browser may send: an upload in pieces with a running count against the size
  limit, accepted file types, a server-chosen file name.
- :mod:`.session` - everything a button does, as plain functions and one :class:`~.session.StudySession`
  on a MRML scene; no trame, so the tests drive it headless (slicer-core without trame is enough).
- :mod:`.app` - the page: trame-slicer's views and segment editor plus the LumbarSeg panel, thin.
- :mod:`.cli` - the ``serve`` subcommand's arguments and its checks (loopback by default, warning otherwise).
"""
