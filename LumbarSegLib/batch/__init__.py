"""``lumbarseg batch``: many studies, one result folder each, and a summary table.

:mod:`.command` (the subcommand: arguments, checks, the run), :mod:`.studies` (finding the studies in a
folder), :mod:`.cluster` (the workers, local or on a Dask cluster, each running :mod:`..study.runner`) and
:mod:`.summary` (the summary CSV). Uses :mod:`..study` and the layers below it.
"""
