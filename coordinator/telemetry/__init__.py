"""Telemetry ingest: the receiver process, its supervisor, the writer, rows, rollups, retention."""
