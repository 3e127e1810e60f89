"""The coordinator's MQTT control channels: the link and the command signer."""
