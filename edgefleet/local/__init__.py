"""The whole system on one machine (demo, tests, benches): brokers, LocalFleet, chaos, demo models."""
