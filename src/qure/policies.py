"""Names of the run policies the CLIs offer, in a module with no imports: a CLI that only
parses its options (and the code-provenance graph of every rule) does not reach the data
loaders through them."""

#: ``data.missing_images``: stop at the first missing image, or leave it out and count it
#: (qure.stages.data applies them).
MISSING_POLICIES = ("fail", "drop")
