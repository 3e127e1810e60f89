"""The edgefleet coordinator: model registry, fleet state, desired-state rollouts over MQTT, REST API."""
