"""Federated participation: labelled samples, the supervised SuperNode, the node's key."""
