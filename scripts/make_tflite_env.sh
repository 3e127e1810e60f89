#!/usr/bin/env bash
# Create the separate Python environment `edgefleet compress` uses to export TFLite candidates.
#
# litert-torch pulls jax, transformers and a typer newer than flwr allows, so it cannot live beside
# edgefleet. This venv holds only litert-torch and the same torch as the main environment (the model
# travels as a torch.export program, which needs matching torch versions); edgefleet itself is not
# installed there. Then point the compressor at it:
#
#   scripts/make_tflite_env.sh /opt/litert-venv
#   edgefleet compress ... --tflite-python /opt/litert-venv/bin/python
#   # or: export EDGEFLEET_TFLITE_PYTHON=/opt/litert-venv/bin/python
#
# Checked 2026-11 on x86_64, Python 3.11: litert-torch 0.10.0 with torch 2.13.0+cpu (about 2 GB,
# 3-4 minutes). PYTHON (default python3, 3.11 or newer: the worker runs with -P) picks the
# interpreter; TORCH overrides the torch pin;
# TORCH_INDEX (default the PyTorch CPU index, so pip does not pull a multi-GB CUDA build) may be set
# empty to use only your pip configuration (e.g. a local wheel).
set -euo pipefail

VENV="${1:-.venv-tflite}"
PYTHON="${PYTHON:-python3}"
LITERT_TORCH_VERSION="0.10.0"
TORCH="${TORCH:-$(python3 -c 'import torch; print(torch.__version__.split("+")[0])' 2>/dev/null || echo 2.13.0)}"

"$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install --upgrade pip
TORCH_INDEX="${TORCH_INDEX-https://download.pytorch.org/whl/cpu}"
index=()
if [ -n "$TORCH_INDEX" ]; then index=(--extra-index-url "$TORCH_INDEX"); fi
# The versions litert-torch resolved to when this was checked; the converter stack moves fast.
"$VENV/bin/pip" install "${index[@]}" \
    "litert-torch==${LITERT_TORCH_VERSION}" "torch==${TORCH}" \
    "litert-converter==0.5.0" "ai-edge-litert==2.3.0" "torchao==0.18.0" "jax==0.10.2" "jaxlib==0.10.2"
"$VENV/bin/python" -c 'import litert_torch, torch; print("litert-torch ok, torch", torch.__version__)'
echo "export environment ready: --tflite-python $VENV/bin/python (or EDGEFLEET_TFLITE_PYTHON)"
