"""Small recognition networks of the embedded model pack: identity encoder and style classifier.

They are trained on the procedural head world (``scripts/pack/train_recognition.py``) and used by
:mod:`engine.evaluate.metrics` to measure stylization without downloading ArcFace or CLIP::

    from engine.evaluate.recognition import load_identity_encoder, load_style_classifier

    encoder = load_identity_encoder("engine/pack/embedded-v1/recognition/identity_encoder.safetensors")
    emb = encoder.embed(images)            # images (N, 3, H, W) in [-1, 1], any size → (N, 64) unit vectors
    classifier = load_style_classifier("engine/pack/embedded-v1/recognition/style_classifier.safetensors")
    probs = classifier.predict(images)     # (N, 6), columns in classifier.styles order
    zombie = classifier.style_score(images, "zombie")   # (N,)
"""

from .augment import AugmentConfig, augment
from .metrics import info_nce, retrieval_top1, same_vs_different_cosine, supervised_contrastive
from .networks import (
    BackboneConfig,
    IdentityEncoder,
    IdentityEncoderConfig,
    StyleClassifier,
    StyleClassifierConfig,
)
from .preprocess import check_images, prepare_images, resize_images
from .storage import (
    load_identity_encoder,
    load_recognition_model,
    load_style_classifier,
    read_recognition_metadata,
    save_recognition_model,
)

__all__ = [
    "AugmentConfig", "BackboneConfig", "IdentityEncoder", "IdentityEncoderConfig", "StyleClassifier",
    "StyleClassifierConfig", "augment", "check_images", "info_nce", "load_identity_encoder",
    "load_recognition_model", "load_style_classifier", "prepare_images", "read_recognition_metadata",
    "resize_images", "retrieval_top1", "same_vs_different_cosine", "save_recognition_model",
    "supervised_contrastive",
]
