"""Validation patterns match the whole value: a trailing newline is not a slug.

Python's ``$`` also matches before a final ``\\n``, so ``re.match(r"^[a-z]+$")``
accepts ``"salesforce\\n"``. Every pattern here must use ``fullmatch``.
"""

from __future__ import annotations

import string
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from nexus_broker.domain.params import parse_params
from nexus_broker.domain.providers import ProviderSpec, validate_spec
from nexus_broker.domain.state import StateSigner
from nexus_common import StateInvalid, ValidationFailed

from tests.samples import SALESFORCE_SPEC

_SLUG = set(string.ascii_lowercase + string.digits + "-")
NOW = datetime(2026, 11, 23, tzinfo=UTC)


def _accepted(spec: ProviderSpec) -> bool:
    try:
        validate_spec(spec, has_secret=True)
    except ValidationFailed as exc:
        assert exc.metadata["field"] == "name"
        return False
    return True


@given(st.text(alphabet=st.sampled_from([*sorted(_SLUG), "\n", "\r", " ", "_", "A", "é"])))
def test_a_provider_name_is_accepted_exactly_when_it_is_a_slug(name: str) -> None:
    expected = 1 <= len(name) <= 63 and set(name) <= _SLUG
    assert _accepted(replace(SALESFORCE_SPEC, name=name)) is expected


@given(st.text(alphabet=sorted(_SLUG), min_size=1, max_size=62), st.sampled_from(["\n", "\r\n"]))
def test_a_name_with_a_trailing_newline_is_refused(name: str, ending: str) -> None:
    assert _accepted(replace(SALESFORCE_SPEC, name=name))
    assert not _accepted(replace(SALESFORCE_SPEC, name=name + ending))


def test_a_category_with_a_trailing_newline_is_refused() -> None:
    with pytest.raises(ValidationFailed) as caught:
        validate_spec(replace(SALESFORCE_SPEC, category="crm\n"), has_secret=True)
    assert caught.value.metadata["field"] == "category"


def _schema(**field: Any) -> dict[str, Any]:
    return {"credential_schema": {"fields": [{"name": "api_key", **field}]}}


@pytest.mark.parametrize(
    ("auth_type", "params", "field"),
    [
        ("api_key", _schema(name="api_key\n"), "params.credential_schema.fields[0].name"),
        ("api_key", _schema(key="X-Api-Key\n"), "params.credential_schema.fields[0].key"),
        ("oauth2", {"access_type\n": "offline"}, "params.access_type\n"),
    ],
)
def test_params_names_with_a_trailing_newline_are_refused(
    auth_type: str, params: dict[str, Any], field: str
) -> None:
    with pytest.raises(ValidationFailed) as caught:
        parse_params(auth_type, params)
    assert caught.value.metadata["field"] == field


def test_a_state_with_a_trailing_newline_is_refused() -> None:
    signer = StateSigner(b"k" * 32)
    state = signer.issue(NOW + timedelta(minutes=5)).token
    assert signer.verify(state, NOW)
    with pytest.raises(StateInvalid, match="malformed"):
        signer.verify(state + "\n", NOW)
