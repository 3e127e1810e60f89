"""The edgefleet agent: the daemon on each edge device that serves the active model locally and
converges to the coordinator's desired state over MQTT."""

__version__ = "0.1.0"
