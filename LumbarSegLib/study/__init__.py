"""Running one study: the one way to segment a CT into a result folder, and its subprocess runner.

:mod:`.runner` (read, segment, measure and write one study: ``lumbarseg segment``, ``demo`` and the batch
workers use it) and :mod:`.engine_process` (that command line in a subprocess, with progress and cancel,
for the Slicer module and the web app). Uses every layer below it; nothing below imports it.
"""
