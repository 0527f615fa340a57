"""Reporting helpers: the QuRe paper's reported numbers (:mod:`qure.reporting.paper`)."""
