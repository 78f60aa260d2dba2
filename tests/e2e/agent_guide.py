"""What the agent-sessions guide's Steps 1-3 leave behind, shared by the SDK tests."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Guide:
    """What Steps 1-3 leave behind: two agents' keys and sarah's Salesforce connection."""

    crm_key: str
    ops_key: str
    connection_id: str
