"""Who may do what: API tokens, enrollment, the broker's passwords and ACLs."""
