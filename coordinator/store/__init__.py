"""The fleet store: one interface, its SQLite backend, the numbered migrations."""
