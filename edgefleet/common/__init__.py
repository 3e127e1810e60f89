"""Shared plumbing every layer may use: errors, exit codes, output, logging, MQTT settings, files."""
