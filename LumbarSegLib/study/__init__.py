"""Running one study: the one way to segment a CT into a result folder, and its subprocess runner.

:mod:`.runner` (:func:`.runner.run_study` with :class:`.runner.StudyOptions`: a file, a folder or an image in
memory in, a result folder with report.json and its provenance out; ``lumbarseg segment``, ``demo`` and the
batch workers use it), :mod:`.console` (what a run prints: stage lines, the summary, the provenance line) and :mod:`.engine_process` (that command line in a subprocess, with progress and cancel,
for the Slicer module and the web app). Uses every layer below it; nothing below imports it.
"""
