"""Nexus policy: the decision point for scopes, agents and on-behalf-of checks."""
