"""qure-repro: a reproducibility pipeline for composed image retrieval around QuRe."""

__version__ = "0.1.0"
