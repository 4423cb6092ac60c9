"""Synthetic lumbar-spine CT phantoms with exact VerSe labels (training data for the bundled model).

Everything is built in physical millimetres in patient LPS coordinates (x = patient left, y = posterior,
z = superior), so anatomy keeps its size whatever the grid. Bones are composed as signed distance fields
(SDF, mm, negative inside) in local bounding boxes; the label of a voxel is the bone owning the smallest SDF
there when that SDF is negative, so labels describe exactly what is drawn. Soft tissue is painted per slice
with broadcasting; the CT is then blurred (scanner PSF) and noised.

Public API: :func:`generate_phantom`, :func:`write_verse_dataset`, :func:`load_shape_library`,
:data:`FOV_CHOICES`.

Vertebra shapes come either from a procedural model (body with waist and concave endplates, pedicles,
laminae, spinous/transverse/articular processes, ribs on thoracic levels) or, when a shape library of real
masks is available (``<repo>/../shared/data/masks``), from real VerSe / TotalSegmentator vertebra masks
resampled with random scaling and smooth elastic deformation.

Modules, by concern (imports point down the list):

* :mod:`.geometry` - SDF primitives, rotations, the LPS grid, smooth random fields;
* :mod:`.shapes`   - the shape library of real vertebra masks, VerSe codes;
* :mod:`.spine`    - vertebra sizes per level, the spinal curve, the procedural vertebra;
* :mod:`.anatomy`  - drawing the bones (vertebrae, ribs, sacrum, pelvis, femurs, sternum);
* :mod:`.tissue`   - soft tissue, organs, muscles, vessels, discs, bone density;
* :mod:`.scanner`  - table, arms, metal, blur, noise;
* :mod:`.generator` - field of view, grid, assembly (:func:`generate_phantom`), VerSe datasets.
"""

from ..lazy_exports import lazy_getattr

# Fields of view the generator draws (see :mod:`.generator`). Defined here, before any heavy import, so that
# ``lumbarseg --help`` lists them without loading scipy or torch.
FOV_CHOICES = ("abdomen", "lumbar", "lower", "upper", "thoracic", "slab", "tight")

# The rest loads from its module on first use.
_EXPORTS = {"generate_phantom": "generator", "write_verse_dataset": "generator", "load_shape_library": "shapes",
            "ShapeLibrary": "shapes"}
__all__ = ["FOV_CHOICES", *_EXPORTS]


__getattr__ = lazy_getattr(__name__, _EXPORTS, globals())
