"""Where dlib's model files are: the ``face-recognition-models`` package (weights inside it, from PyPI).

Shared by the real-face identity backend (:mod:`engine.evaluate.face_recognition`) and face framing
(:mod:`engine.heads.face_framing`). The package's own ``__init__`` imports ``pkg_resources`` (setuptools) just
to find its folder; we locate the folder with ``importlib`` instead, so setuptools is not needed at run time.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

MODELS_PACKAGE = "face_recognition_models"
RECOGNITION_MODEL = "dlib_face_recognition_resnet_model_v1.dat"
LANDMARKS_5 = "shape_predictor_5_face_landmarks.dat"
LANDMARKS_68 = "shape_predictor_68_face_landmarks.dat"
INSTALL_HINT = "pip install dlib-bin==20.0.1.post1 face-recognition-models==0.3.0 (both in requirements.txt)"


def dlib_models_folder() -> Path | None:
    """The folder holding dlib's model files, or None when the package (or its recognition model) is missing."""
    spec = importlib.util.find_spec(MODELS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0]) / "models"
    return folder if (folder / RECOGNITION_MODEL).is_file() and (folder / LANDMARKS_5).is_file() else None


def dlib_available() -> bool:
    """Whether dlib and its model files are installed."""
    return importlib.util.find_spec("dlib") is not None and dlib_models_folder() is not None
