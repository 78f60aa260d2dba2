from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st
from nexus_common import Keyring, KeyringError, generate_key_spec


def test_sealed_value_opens_only_with_the_same_row_binding() -> None:
    keyring = Keyring.from_spec(generate_key_spec(1))
    sealed = keyring.seal(b"s3cret", b"providers/a/client_secret")
    assert b"s3cret" not in sealed
    assert keyring.open(sealed, b"providers/a/client_secret") == b"s3cret"
    with pytest.raises(KeyringError):
        keyring.open(sealed, b"providers/b/client_secret")


def test_rotation_seals_with_the_newest_key_and_still_opens_old_values() -> None:
    first, second = generate_key_spec(1), generate_key_spec(2)
    sealed_v1 = Keyring.from_spec(first).seal(b"value", b"aad")
    rotated = Keyring.from_spec(f"{first},{second}")
    assert rotated.primary == 2
    assert rotated.open(sealed_v1, b"aad") == b"value"
    assert rotated.needs_reseal(sealed_v1)
    assert not rotated.needs_reseal(rotated.seal(b"value", b"aad"))
    with pytest.raises(KeyringError):
        Keyring.from_spec(second).open(sealed_v1, b"aad")


def test_a_key_distributed_before_its_promotion_seals_nothing() -> None:
    first, second = generate_key_spec(1), generate_key_spec(2)
    old = Keyring.from_spec(first)
    distributed = Keyring.from_spec(f"{first},{second}", primary=1)
    promoted = Keyring.from_spec(f"{first},{second}", primary=2)
    # While key 2 rolls out, replicas that lack it open what the others seal.
    assert old.open(distributed.seal(b"value", b"aad"), b"aad") == b"value"
    # While its promotion rolls out, every replica has it.
    assert distributed.open(promoted.seal(b"value", b"aad"), b"aad") == b"value"
    assert promoted.open(distributed.seal(b"value", b"aad"), b"aad") == b"value"
    assert promoted.needs_reseal(distributed.seal(b"value", b"aad"))
    with pytest.raises(KeyringError, match="primary key version 3"):
        Keyring.from_spec(f"{first},{second}", primary=3)


def test_tampered_ciphertext_is_refused() -> None:
    keyring = Keyring.from_spec(generate_key_spec(1))
    sealed = bytearray(keyring.seal(b"value", b"aad"))
    sealed[-1] ^= 1
    with pytest.raises(KeyringError):
        keyring.open(bytes(sealed), b"aad")


@pytest.mark.parametrize(
    "spec", ["", "x:abc", "1:not-base64!", f"1:{base64.b64encode(b'short').decode()}"]
)
def test_malformed_keyring_specs_are_refused(spec: str) -> None:
    with pytest.raises(KeyringError):
        Keyring.from_spec(spec)


@given(plaintext=st.binary(max_size=2048), aad=st.binary(max_size=64))
def test_seal_then_open_round_trips(plaintext: bytes, aad: bytes) -> None:
    keyring = Keyring.from_spec("1:" + base64.b64encode(b"k" * 32).decode())
    assert keyring.open(keyring.seal(plaintext, aad), aad) == plaintext
