"""Known-answer tests for every primitive secure aggregation uses, and their failure modes."""

from __future__ import annotations

import numpy as np
import pytest

from veil.errors import AuthenticationError, ConfigurationError, RemoteProtocolError
from veil.secagg import crypto

h = bytes.fromhex


def test_x25519_rfc7748_known_answer() -> None:
    alice = crypto.AgreementKey.from_private_bytes(
        h("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
    )
    bob = crypto.AgreementKey.from_private_bytes(
        h("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
    )
    assert alice.public == h("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
    assert bob.public == h("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
    shared = h("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742")
    assert alice.exchange(bob.public) == shared == bob.exchange(alice.public)


def test_x25519_refuses_malformed_and_low_order_keys() -> None:
    key = crypto.AgreementKey()
    with pytest.raises(RemoteProtocolError, match="32 raw bytes"):
        key.exchange(b"short")
    with pytest.raises(RemoteProtocolError):
        key.exchange(bytes(32))  # the all-zero point has order 1
    assert key.public.hex()[:16] in repr(key) and key.private_bytes().hex() not in repr(key)


def test_hkdf_rfc5869_test_case_1() -> None:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    okm = HKDF(
        algorithm=hashes.SHA256(),
        length=42,
        salt=h("000102030405060708090a0b0c"),
        info=h("f0f1f2f3f4f5f6f7f8f9"),
    ).derive(b"\x0b" * 22)
    assert okm == h(
        "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"
    )


def test_derive_separates_sessions_rounds_and_purposes() -> None:
    secret = b"\x07" * 32
    base = crypto.derive(secret, session=b"s1", round=1, purpose="mask")
    assert len(base) == 32
    assert base == crypto.derive(secret, session=b"s1", round=1, purpose="mask")
    others = {
        crypto.derive(secret, session=b"s2", round=1, purpose="mask"),
        crypto.derive(secret, session=b"s1", round=2, purpose="mask"),
        crypto.derive(secret, session=b"s1", round=1, purpose="share"),
    }
    assert base not in others and len(others) == 3


def test_aes_gcm_known_answer_and_sealing() -> None:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    # McGrew and Viega, GCM test case 2: zero key, zero nonce, one zero block
    out = AESGCM(bytes(16)).encrypt(bytes(12), bytes(16), None)
    assert out == h("0388dace60b6a392f328c2b971b2fe78ab6e47d42cec13bdf53a67b21257bddf")
    key = crypto.derive(b"k" * 32, session=b"s", round=1, purpose="share")
    aad = b"from=1|to=2|session=s|round=1"
    sealed = crypto.seal(key, b"shares", associated_data=aad)
    assert crypto.seal(key, b"shares", associated_data=aad) != sealed  # fresh nonce each time
    assert crypto.open_sealed(key, sealed, associated_data=aad) == b"shares"


@pytest.mark.parametrize("tamper", ["aad", "key", "bit", "truncated"])
def test_every_failure_to_open_is_one_opaque_error(tamper: str) -> None:
    key = bytes(range(32))
    aad = b"from=1|to=2|round=1"
    sealed = bytearray(crypto.seal(key, b"secret shares", associated_data=aad))
    if tamper == "aad":  # re-routed to another recipient
        aad = b"from=1|to=3|round=1"
    elif tamper == "key":
        key = bytes(32)
    elif tamper == "bit":
        sealed[20] ^= 1
    else:
        sealed = sealed[:20]
    with pytest.raises(AuthenticationError, match=r"^a sealed message failed to open$"):
        crypto.open_sealed(key, bytes(sealed), associated_data=aad)


def test_mask_is_the_aes_ctr_keystream_nist_sp800_38a() -> None:
    # F.5.5 CTR-AES256: the first keystream block is ciphertext XOR plaintext
    key = h("603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4")
    block = crypto.keystream(key, h("f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff"), 16)
    expected = bytes(
        a ^ b
        for a, b in zip(
            h("601ec313775789a5b7a7f504bbf3d228"),
            h("6bc1bee22e409f96e93d7e117393172a"),
            strict=True,
        )
    )
    assert block == expected
    words = crypto.mask(key, 8)
    assert words.dtype == np.uint32 and words.shape == (8,)
    assert words.tobytes() == crypto.keystream(key, bytes(16), 32)  # little-endian words


def test_pairwise_masks_cancel_in_z_2_32() -> None:
    """Clients u < v add and subtract the same mask: the sum of the masked vectors is the sum
    of the inputs modulo 2^32."""
    rng = np.random.default_rng(0)
    keys = [crypto.AgreementKey() for _ in range(5)]
    inputs = [rng.integers(0, 2**32, size=1000, dtype=np.uint64).astype(np.uint32) for _ in keys]
    masked = []
    for u, key in enumerate(keys):
        y = inputs[u].copy()
        for v, other in enumerate(keys):
            if u == v:
                continue
            seed = crypto.derive(key.exchange(other.public), session=b"s", round=1, purpose="pair")
            m = crypto.mask(seed, 1000)
            y = y + m if u < v else y - m  # uint32 arithmetic wraps
        masked.append(y)
    total = np.zeros(1000, dtype=np.uint32)
    expected = np.zeros(1000, dtype=np.uint32)
    for y, x in zip(masked, inputs, strict=True):
        total += y
        expected += x
    np.testing.assert_array_equal(total, expected)
    assert not np.array_equal(masked[0], inputs[0])


def test_ed25519_rfc8032_test_1_and_refusals() -> None:
    key = crypto.SigningKey.from_private_bytes(
        h("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
    )
    assert key.public == h("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
    signature = key.sign(b"")
    assert signature == h(
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e3970"
        "1cf9b46bd25bf5f0595bbe24655141438e7a100b"
    )
    crypto.verify(key.public, signature, b"")
    with pytest.raises(AuthenticationError, match="did not verify"):
        crypto.verify(key.public, signature, b"x")
    with pytest.raises(AuthenticationError):
        crypto.verify(crypto.SigningKey().public, signature, b"")


def test_the_masker_adds_and_subtracts_exactly_the_mask_in_place() -> None:
    from veil.secagg.crypto import Masker, mask

    rng = np.random.default_rng(0)
    target = rng.integers(0, 2**32, size=1000, dtype=np.uint64).astype(np.uint32)
    start = target.copy()
    masker = Masker(1000)
    seeds = [bytes([i]) * 32 for i in range(3)]
    masker.add(target, seeds[0])
    masker.add(target, seeds[1], subtract=True)
    masker.add(target, seeds[2])
    np.testing.assert_array_equal(
        target, start + mask(seeds[0], 1000) - mask(seeds[1], 1000) + mask(seeds[2], 1000)
    )
    with pytest.raises(ConfigurationError):
        masker.add(np.zeros(999, dtype=np.uint32), seeds[0])
