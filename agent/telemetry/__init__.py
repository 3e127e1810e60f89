"""What the agent measures: request statistics per window and drift against reference statistics."""
