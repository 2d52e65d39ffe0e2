"""Stylization: fine-tune the generator toward a text style by likelihood distillation.

``config`` (:class:`~engine.stylize.config.StylizeConfig`), ``step`` (one training step's renders and
gradients), ``loop`` (:func:`~engine.stylize.loop.stylize`, the training loop), ``training_state`` (a run's
checkpoints, resume), ``cancel`` (cancel file and signals) and ``presets`` (the named styles and their prompts).
"""
