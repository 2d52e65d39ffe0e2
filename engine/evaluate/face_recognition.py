"""A real-face identity backend: dlib's face-recognition ResNet (the ``dlib-face`` backend).

Why: the embedded pack's identity encoder was trained on the procedural head world; it is the right judge of
that world's heads, and the wrong one for heads made by real models (PanoHead, Stable Diffusion) or for
portraits of real people. dlib's ResNet (99.38 % on LFW, 128-D descriptors) was trained on real faces and
its weights ship on PyPI: ``dlib-bin`` (prebuilt dlib, no compiler) and ``face-recognition-models``
(the model files, inside the package). Nothing is downloaded at run time.

Per image: dlib's HOG frontal-face detector finds the face, the largest face's 5 landmarks align it, and the
ResNet gives a 128-D descriptor. A head render at 128² has a face of ~50 px, below the detector's 80 px
window, so the image is upscaled; HOG on such soft faces is sensitive to the scale, so the search tries a
short list of (short side, detector upsampling) passes and stops at the first that finds a face. Measured on
8 pack heads × 5 yaws: one pass at 256 px finds 8/8/7 faces at 0°/+20°/−20°, (256, 0) then (512, ×2) finds
8/8/8 (and 2/8 at 45°, none at 90° or behind — a frontal detector). Where no face is found — a profile or back view, or a stylization that broke the face — the row
is **NaN**: :func:`engine.evaluate.metrics.evaluate_renders` then measures identity on the views where every
head has a face, and reports the fraction of renders with one (``faces_found_before`` / ``_after``).

The model files are found by :mod:`engine.io.dlib_models`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from ..errors import ConfigError
from ..io.dlib_models import INSTALL_HINT, LANDMARKS_5, MODELS_PACKAGE, RECOGNITION_MODEL, dlib_models_folder
from ..io.images import to_uint8_rgb
from ..pack import sha256_file
from .recognition.preprocess import check_images


class DlibFaceBackend:
    """dlib's face-recognition ResNet as an :class:`~engine.evaluate.metrics.IdentityBackend`.

    ``embed`` returns (N, 128) descriptors with **NaN rows where no face was found**.
    """

    name = "dlib-face"
    dim = 128

    def __init__(self, models_folder: str | Path | None = None,
                 search: tuple[tuple[int, int], ...] = ((256, 0), (512, 1))):
        try:
            import dlib
        except ImportError:
            raise ConfigError(f"the dlib-face identity backend needs dlib: {INSTALL_HINT}") from None
        folder = Path(models_folder) if models_folder is not None else dlib_models_folder()
        if folder is None or not (folder / RECOGNITION_MODEL).is_file() or not (folder / LANDMARKS_5).is_file():
            where = folder if folder is not None else f"the {MODELS_PACKAGE} package"
            raise ConfigError(f"dlib's model files ({RECOGNITION_MODEL}, {LANDMARKS_5}) are not in {where}: {INSTALL_HINT}")
        search = tuple((int(side), int(up)) for side, up in search)
        if not search or any(side < 32 or not 0 <= up <= 2 for side, up in search):
            raise ConfigError(f"dlib-face: search passes must be (short side ≥ 32, upsampling 0…2), got {search}")
        self.models_folder = folder
        self.search = search
        self.detector = dlib.get_frontal_face_detector()
        self.landmarks = dlib.shape_predictor(str(folder / LANDMARKS_5))
        self.recognizer = dlib.face_recognition_model_v1(str(folder / RECOGNITION_MODEL))

    @property
    def fingerprint(self) -> str:
        """What decides the embeddings (model files and settings): keys caches of embeddings."""
        files = [sha256_file(self.models_folder / f) for f in (RECOGNITION_MODEL, LANDMARKS_5)]
        passes = ",".join(f"{side}x{up}" for side, up in self.search)
        return f"{self.name}:{':'.join(f[:16] for f in files)}:{passes}"

    def find_face(self, image: Tensor):
        """(uint8 RGB image at the pass that found a face, the largest face's rectangle), or None."""
        for side, upsample in self.search:
            rgb = to_uint8_rgb(image, side)
            boxes = self.detector(rgb, upsample)
            if len(boxes):
                return rgb, max(boxes, key=lambda box: box.area())
        return None

    def embed(self, images: Tensor) -> Tensor:
        images = check_images(images)
        out = torch.full((images.shape[0], self.dim), float("nan"))
        for i, image in enumerate(images):
            found = self.find_face(image)
            if found is None:
                continue
            rgb, box = found
            descriptor = self.recognizer.compute_face_descriptor(rgb, self.landmarks(rgb, box))
            out[i] = torch.tensor(list(descriptor), dtype=torch.float32)
        return out
