"""The wire contract both sides speak: MQTT topics, message models and the signed bundle format.

No I/O happens in this package; the agent and the coordinator import it.
"""
