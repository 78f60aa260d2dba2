"""The gateway's memory of refused agent keys: bounded, lapsing, and forgetful
of anything asked before a change (see nexus_gateway.agent_keys)."""

from __future__ import annotations

from nexus_gateway.agent_keys import _Refusals

REFUSED = "a valid agent key is required"


def refusals(seconds: float = 10, max_entries: int = 3) -> tuple[_Refusals, list[float]]:
    now = [0.0]
    kept = _Refusals(seconds, max_entries, lambda: now[0])
    kept.resume()
    return kept, now


def test_a_refusal_is_kept_for_its_seconds_then_asked_again() -> None:
    kept, now = refusals()
    kept.keep(b"k1", REFUSED, kept.epoch)
    now[0] = 9.9
    assert kept.of(b"k1") == REFUSED
    now[0] = 10.0
    assert kept.of(b"k1") is None


def test_refusals_are_bounded_oldest_first() -> None:
    kept, _ = refusals(max_entries=3)
    for digest in (b"k1", b"k2", b"k3", b"k4"):
        kept.keep(digest, REFUSED, kept.epoch)
    assert [kept.of(d) for d in (b"k1", b"k2", b"k3", b"k4")] == [None, REFUSED, REFUSED, REFUSED]


def test_a_refusal_asked_before_a_change_is_not_kept() -> None:
    kept, _ = refusals()
    asked = kept.epoch
    kept.forget()  # an agent change heard while the policy service was asked
    kept.keep(b"k1", REFUSED, asked)
    assert kept.of(b"k1") is None


def test_nothing_is_kept_while_the_feed_is_down_or_when_turned_off() -> None:
    kept, _ = refusals()
    kept.keep(b"k1", REFUSED, kept.epoch)
    kept.suspend()
    assert kept.of(b"k1") is None
    kept.keep(b"k1", REFUSED, kept.epoch)
    assert kept.of(b"k1") is None
    off, _ = refusals(seconds=0)
    off.keep(b"k1", REFUSED, off.epoch)
    assert off.of(b"k1") is None
