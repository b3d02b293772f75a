"""Batch tools above the pipeline: input planning, the upscale batch and the degrade batch.

Layering (one way): the CLI calls this package; it calls :mod:`nsarm_core.pipeline` (which calls the models) and
:mod:`nsarm_core.data`. The evaluation and the robustness sweep use the same batches as ``nsarm upscale`` and
``nsarm degrade``, so their outputs can be compared file for file.
"""
