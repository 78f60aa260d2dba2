"""Nexus broker: providers, connections, the token vault and sessions."""
