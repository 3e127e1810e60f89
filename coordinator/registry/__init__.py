"""The model registry: verified bundle artefacts by digest, model versions and stages."""
