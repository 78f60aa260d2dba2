"""Which cached rows a unit of work wrote, named by the tags caches and notices share.

A tag is ``connection:<id>`` or ``provider:<id>``: the same text the
PostgreSQL triggers send on channel ``nexus_broker`` (migration 0007), so a
write is dropped from caches by the same name here and in every other replica.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["CHANNEL", "CONNECTION", "PROVIDER", "Writes", "connection_tag", "provider_tag"]

CHANNEL = "nexus_broker"
CONNECTION = "connection:"
PROVIDER = "provider:"


def connection_tag(connection_id: str) -> str:
    return CONNECTION + connection_id


def provider_tag(provider_id: str) -> str:
    return PROVIDER + provider_id


@dataclass
class Writes:
    """Filled by the repositories' write methods; read once the unit of work commits."""

    tags: set[str] = field(default_factory=set)
    # A bulk rewrite (re-sealing) touched rows it does not name.
    everything: bool = False

    def connection(self, connection_id: str) -> None:
        self.tags.add(connection_tag(connection_id))

    def provider(self, provider_id: str) -> None:
        self.tags.add(provider_tag(provider_id))

    def all(self) -> None:
        self.everything = True

    def take(self) -> Writes:
        """What was recorded so far, leaving this empty."""
        taken = Writes(set(self.tags), self.everything)
        self.tags.clear()
        self.everything = False
        return taken
