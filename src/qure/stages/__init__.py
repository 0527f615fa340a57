"""The workflow's stages, one module each, called by the thin CLIs in workflow_scripts/:

- :mod:`qure.stages.data`: which splits a stage reads, where their images are, and the
  missing-image policy (applied there once);
- :mod:`qure.stages.models`: building and loading backbones and feature caches;
- :mod:`qure.stages.pretrain`: the mini backbone's pretraining (encoder, Q-Former);
- :mod:`qure.stages.features`: frozen image features, one path for every backbone;
- :mod:`qure.stages.train`: one training run;
- :mod:`qure.stages.evaluate`: final models on their evaluation splits;
- :mod:`qure.stages.analysis`: the hard-set audit and examples.

Every model stage takes ``device`` (auto, cpu, cuda; see :mod:`qure.device`) and
``missing`` (the ``data.missing_images`` policy).
"""
