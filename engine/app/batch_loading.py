"""The models a batch needs, by mode: one place for the local batch command and the farm's driver.

Kept apart from :mod:`engine.app.batch` and :mod:`engine.app.batch_mesh` because it chooses between them
(``batch_mesh`` builds on ``batch``; a chooser inside ``batch`` would make the two import each other).
"""

from __future__ import annotations

from . import batch
from ..io.events import emit
from ..stylize.cancel import CancelToken


def load_batch_models(settings: batch.BatchSettings, cancel: CancelToken,
                      on_event: batch.EventSink = emit) -> batch.BatchModels | None:
    """The models a batch of ``settings.mode`` needs (mesh mode: :func:`engine.app.batch_mesh.load_mesh_mode_models`),
    or None when the user cancelled while the generator was being stylized (acknowledged and reported).

    The loaders are looked up on their modules at call time, so a test can replace one."""
    try:
        if settings.mode == "mesh":
            from . import batch_mesh

            return batch_mesh.load_mesh_mode_models(settings, cancel, on_event)
        return batch.load_engine_models(settings, cancel, on_event)
    except batch.StylizationCancelled as exc:
        cancel.acknowledge()
        on_event("cancelled", stage="stylize", message=str(exc))
        return None
