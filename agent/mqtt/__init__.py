"""The agent's MQTT side: the link, signed commands, the durable outbox and its sender."""
