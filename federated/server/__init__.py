"""The server role of a campaign: the ServerApp, rounds, strategies, evaluation, deployment."""
