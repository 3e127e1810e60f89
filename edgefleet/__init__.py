"""The `edgefleet` command line and the end-to-end demo."""
