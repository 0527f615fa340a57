#!/usr/bin/env bash
# Create (or reuse) the separate Python 3.11 environment with PyPI's salesforce-lavis 1.0.2
# that tools/lavis_parity_dump.py runs in. It lives outside the repository, in
#   ${QURE_LAVIS_ENV:-${XDG_CACHE_HOME:-$HOME/.cache}/qure-repro/lavis-env}
# and is reused when its completion marker matches the package list below.
#
# Why these pins: salesforce-lavis 1.0.2 (the only PyPI release) needs transformers<4.27,
# which needs Python <= 3.11; it imports torchvision, and PyPI torchvision wheels only load
# with the matching PyPI (CUDA) torch build, hence torch 2.11.0 + torchvision 0.26.0;
# numpy<2 and pandas<3 because the 2023 pins (opencv 4.5.5, spacy's stack) predate them.
# The project's own environment is never touched.
#
# Prints the environment's python path on its last line. Exit codes: 0 ready,
# 3 Python 3.11 not found, 4 pip install failed, 5 installed but lavis does not import,
# 6 the folder exists and is not a virtual environment (it is never deleted then).
set -euo pipefail

ENV_DIR=${QURE_LAVIS_ENV:-${XDG_CACHE_HOME:-$HOME/.cache}/qure-repro/lavis-env}
PYTHON311=${QURE_LAVIS_PYTHON:-python3.11}
PACKAGES=(
    "salesforce-lavis==1.0.2"
    "torch==2.11.0"
    "torchvision==0.26.0"
    "numpy<2"
    "pandas<3"
)
MARKER="$ENV_DIR/.qure-lavis-env-complete"
SPEC="format=1 ${PACKAGES[*]}"

ready() {
    [[ -f "$MARKER" && "$(cat "$MARKER")" == "$SPEC" && -x "$ENV_DIR/bin/python" ]]
}
if ready; then
    echo "reusing $ENV_DIR" >&2
    echo "$ENV_DIR/bin/python"
    exit 0
fi

# One creator at a time (two test runs starting together wait for each other).
mkdir -p "$(dirname "$ENV_DIR")"
if command -v flock >/dev/null 2>&1; then
    exec 9>"$ENV_DIR.lock"
    flock 9
    if ready; then
        echo "reusing $ENV_DIR" >&2
        echo "$ENV_DIR/bin/python"
        exit 0
    fi
fi
if [[ -e "$ENV_DIR" && ! -f "$ENV_DIR/pyvenv.cfg" && -n "$(ls -A "$ENV_DIR" 2>/dev/null)" ]]; then
    echo "error: $ENV_DIR exists and is not a virtual environment; not touching it" >&2
    exit 6
fi

if ! command -v "$PYTHON311" >/dev/null 2>&1 \
        || ! "$PYTHON311" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
    echo "error: $PYTHON311 is not a Python 3.11 interpreter (set QURE_LAVIS_PYTHON)" >&2
    exit 3
fi

started=$(date +%s)
rm -rf "$ENV_DIR"  # an incomplete or outdated environment from an earlier attempt
"$PYTHON311" -m venv "$ENV_DIR"
if ! "$ENV_DIR/bin/python" -m pip install --quiet --disable-pip-version-check \
        "${PACKAGES[@]}" >&2; then
    echo "error: pip could not install ${PACKAGES[*]} into $ENV_DIR" >&2
    exit 4
fi
# The parity dump needs the Q-Former and the CLIP ViT from lavis (importing them runs
# lavis/__init__.py, which imports every model, processor and dataset builder).
if ! "$ENV_DIR/bin/python" -c \
        'import lavis.models.clip_vit, lavis.models.blip2_models.Qformer' >&2; then
    echo "error: lavis is installed in $ENV_DIR but does not import" >&2
    exit 5
fi
echo "$SPEC" > "$MARKER"
echo "created $ENV_DIR in $(( $(date +%s) - started )) s" >&2
echo "$ENV_DIR/bin/python"
