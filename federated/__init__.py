"""Federated training campaigns: Flower ServerApp and ClientApp, strategies, DP-SGD and privacy accounting.

Importing this package is cheap; torch, Opacus and Flower load in the modules that need them.
"""
