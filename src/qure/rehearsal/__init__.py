"""An offline rehearsal of the paper profile (``tools/paper_rehearsal.py``).

:mod:`~qure.rehearsal.upstream` builds a fake upstream (the real annotation files plus
small synthetic stand-ins for images, URL lists and LAVIS weights),
:mod:`~qure.rehearsal.mirror` serves it on loopback, :mod:`~qure.rehearsal.weights`
writes LAVIS-format checkpoints with every real key name, and
:mod:`~qure.rehearsal.run` runs ``snakemake all`` of the paper profile against it on a
small subset, and :mod:`~qure.rehearsal.checks` checks the outputs.
"""
