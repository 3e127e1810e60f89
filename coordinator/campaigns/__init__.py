"""Federated campaigns: selection, engines (in-process, Flower deployment), results."""
