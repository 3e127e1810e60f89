"""Staged rollouts: waves, gates on fleet health, rollback."""
