"""Nexus gateway: the public API; authenticates callers and routes to the broker."""
