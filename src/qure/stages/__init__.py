"""The workflow's stages, one module each, called by the thin CLIs in workflow_scripts/:

- :mod:`qure.stages.data`: which splits a stage reads, where their images are, and the
  missing-image policy (applied there once);
- :mod:`qure.stages.models`: building and loading backbones and feature caches;
- :mod:`qure.stages.pretrain`, :mod:`qure.stages.pretrain_qformer`: the mini backbone's
  pretraining (the frozen encoder; each Q-Former);
- :mod:`qure.stages.features`: frozen image features, one path for every backbone;
- :mod:`qure.stages.train`: one training run;
- :mod:`qure.stages.evaluate`: final models on their evaluation splits;
- :mod:`qure.stages.submit`: the CIRR and CIRCO test-server files;
- :mod:`qure.stages.analysis`: the hard-set audit and examples.

Every model stage takes ``device`` (auto, cpu, cuda; see :mod:`qure.device`) and
``missing`` (the ``data.missing_images`` policy).
"""
