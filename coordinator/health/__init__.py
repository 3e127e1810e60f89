"""Fleet health: the signals alerts, rollout gates and /metrics all read."""
