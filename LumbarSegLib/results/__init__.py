"""What a run leaves behind for people: the output folder, the report's parts, pictures, surfaces, model card.

:mod:`.outputs` (an output folder written whole or not at all, ``report.json`` last), :mod:`.preview`
(the PNG preview), :mod:`.surfaces` (STL meshes), :mod:`.model_card` (the model card, read without torch),
:mod:`.training_cases` (was this CT in the model's training data?) and :mod:`.machine_paths` (no local paths
in shared files). Uses the layers below it (io, inference, measures).
"""
