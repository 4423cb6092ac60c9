"""Label codes, names, colours and terminology shared by the engine, the CLI and the Slicer module."""

from pathlib import Path

# Internal label map: 0 = background, 1..5 = L1..L5.
LABEL_NAMES = {1: "L1", 2: "L2", 3: "L3", 4: "L4", 5: "L5"}
NUM_CLASSES = 6  # background + L1..L5

# VerSe label values (Loeffler et al. 2020): 1-7 C1-C7, 8-19 T1-T12, 20-24 L1-L5, 25 L6, 26 sacrum, 28 T13.
VERSE_LUMBAR = {20: 1, 21: 2, 22: 3, 23: 4, 24: 5}
# VerSe codes of the XUNet's context classes (networks.CONTEXT_CLASSES): the neighbours of the lumbar spine.
VERSE_CONTEXT_CODES = {"thoracic": tuple(range(8, 20)) + (28,), "caudal": (25, 26)}
VERSE_NAMES = {**{i: f"C{i}" for i in range(1, 8)}, **{i: f"T{i - 7}" for i in range(8, 20)},
               **{i: f"L{i - 19}" for i in range(20, 25)}, 25: "L6", 26: "S", 28: "T13"}

# Said when the count up from the sacrum and the count down from the ribs differ by one level (a sixth lumbar
# or a sacralised fifth vertebra): inference/naming.py warns with it and every front end shows it.
TRANSITIONAL = "transitional anatomy: check the levels"

# Distinct colours (RGB 0-1) so neighbouring vertebrae are told apart at a glance in 2D and 3D.
LABEL_COLORS = {
    1: (0.90, 0.10, 0.10),  # L1 red
    2: (0.10, 0.75, 0.20),  # L2 green
    3: (0.15, 0.35, 0.95),  # L3 blue
    4: (0.98, 0.85, 0.10),  # L4 yellow
    5: (0.75, 0.20, 0.85),  # L5 magenta
}

# SNOMED CT codes for "Bone structure of Lx" (as used by DICOM CID 7150 and Slicer's terminologies).
SNOMED_VERTEBRA = {
    1: ("66794005", "L1 vertebra"),
    2: ("14293000", "L2 vertebra"),
    3: ("36470004", "L3 vertebra"),
    4: ("11994002", "L4 vertebra"),
    5: ("49668003", "L5 vertebra"),
}
SNOMED_BONE_CATEGORY = ("123037004", "Anatomical Structure")
# The Slicer terminology this extension ships (LumbarSeg/Resources/*.term.json): segments are tagged against
# it in the module and in the .seg.nrrd files the command line writes.
TERMINOLOGY_CONTEXT = "Segmentation category and type - LumbarSeg"
ANATOMIC_CONTEXT = "Anatomic codes - DICOM master list"

# Said on every result (segmentation node, metrics table, DICOM SEG, report): the model is not validated
# for clinical use.
RESEARCH_NOTICE = "Research use only, not a medical device"

# What a CT may be given as, in every message that refuses one.
ACCEPTED_CT_FORMATS = ("NIfTI (.nii, .nii.gz), NRRD (.nrrd), MetaImage (.mha, .mhd) or a folder with one DICOM "
                       "series")


# The bundled models and their cards (LumbarSegLib/../Resources/Models: the repository root, or beside the
# package in an installed Slicer extension).
RESOURCES_DIR = Path(__file__).resolve().parent.parent / "Resources" / "Models"
DEFAULT_MODEL_NAME = "lumbarseg_cpu.pt"


def default_model_path() -> Path:
    return RESOURCES_DIR / DEFAULT_MODEL_NAME
