"""The bundled sample CT as a Slicer *Sample Data* source (works offline: the URI is a local file).

``tools/make_sample_data.py`` writes ``Resources/SampleData/LumbarSegSampleCT.nrrd`` (a synthetic lumbar CT
from the phantom generator) and its SHA-256 beside it. Slicer's Sample Data module copies the file into its
cache with ``urllib`` (which reads ``file://`` URIs) and checks that checksum before loading it.
"""

from __future__ import annotations

from pathlib import Path

from ..constants import RESOURCES_DIR

SAMPLE_CATEGORY = "LumbarSeg"
SAMPLE_NAME = "LumbarSegSampleCT"
SAMPLE_FILE = RESOURCES_DIR.parent / "SampleData" / "LumbarSegSampleCT.nrrd"


def recorded_checksum(path: Path = SAMPLE_FILE) -> str:
    """The checksum recorded beside the sample ("SHA256:<hex>"), as Sample Data expects it."""
    line = Path(str(path) + ".sha256").read_text(encoding="utf-8").split()
    digest, name = line[0], line[1].lstrip("*")
    if name != Path(path).name or len(digest) != 64:
        raise ValueError(f"{path}.sha256 does not record a SHA-256 for {Path(path).name}.")
    return "SHA256:" + digest


def sample_data_source_arguments(thumbnail=None, path: Path = SAMPLE_FILE) -> dict:
    """Keyword arguments for ``SampleData.SampleDataLogic.registerCustomSampleDataSource``.

    That static method takes (Slicer 5.8.0, 5.10.0 and main alike) ``category, sampleName, uris, fileNames,
    nodeNames, customDownloader, thumbnailFileName, loadFileTypes, loadFiles, loadFileProperties,
    checksums, loadFileType`` (the last deprecated); there is no ``sampleDescription`` (only
    ``SampleDataSource`` itself has one), so the button shows ``sampleName``.
    """
    path = Path(path).resolve()
    return {
        "category": SAMPLE_CATEGORY,
        "sampleName": SAMPLE_NAME,
        "uris": [path.as_uri()],
        "fileNames": [path.name],
        "nodeNames": [SAMPLE_NAME],
        "checksums": [recorded_checksum(path)],
        "thumbnailFileName": str(thumbnail) if thumbnail else None,
        "loadFileTypes": ["VolumeFile"],
    }


def register_sample_data(sample_data_module, thumbnail=None) -> bool:
    """Register the sample with Slicer's ``SampleData`` module (skipped when the file is not installed)."""
    if not SAMPLE_FILE.is_file():
        return False
    sample_data_module.SampleDataLogic.registerCustomSampleDataSource(**sample_data_source_arguments(thumbnail))
    return True
