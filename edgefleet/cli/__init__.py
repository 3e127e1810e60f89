"""The `edgefleet` command: one module per command group, one REST client; nothing imports it."""
