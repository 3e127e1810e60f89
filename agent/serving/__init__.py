"""Serving the active model: the loaded model, micro-batching, the local gRPC API and its client."""
