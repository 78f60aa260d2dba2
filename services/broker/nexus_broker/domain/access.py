"""What a caller asks to do with a credential; the policy service decides."""

from __future__ import annotations

__all__ = ["Action"]


class Action:
    GET_TOKEN = "get_token"  # noqa: S105 - an action name
    REFRESH = "refresh"
    AGENT_SESSION = "agent_session"
    OBO_SESSION = "obo_session"
