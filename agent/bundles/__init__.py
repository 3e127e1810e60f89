"""Bundles on the device: the A/B store, fetching over MQTT or HTTP, reconciling desired state."""
