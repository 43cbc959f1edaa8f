"""Maata's models on NVIDIA Triton Inference Server.

* ``export``: ``maata triton export`` writes a model repository (codec encoder, codec decoder,
  S2S step), each a stateful python-backend model under Triton's sequence batcher.
* ``schema``: the models' tensor names (shared by the export, the models and the client).
* ``models``: the python-backend model classes the repository's ``model.py`` files name. State
  lives in the model instance, one slot per sequence (correlation id); one ``execute`` runs ONE
  batched step over every sequence Triton put in the batch.
* ``sequences``: the correlation id -> slot table those models share (pure Python).
* ``launcher``: ``maata triton serve`` / ``TritonServer``: runs the ``tritonserver`` binary that
  the ``nvidia-pytriton`` wheel bundles, with the python backend assembled from the same wheel.
* ``client``: the services' side, over ``tritonclient.grpc.aio``; ``lm_backend`` and
  ``codec_backend``: the generation and codec services' Triton backends
  (``services.common.model_backend`` picks them by config).
* ``commands``: the ``maata triton`` command line.
"""
