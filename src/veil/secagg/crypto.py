"""Every cryptographic primitive secure aggregation uses, behind one small module.

All of it comes from ``cryptography`` (pyca). Protocol code never picks a curve, a nonce or a
key size: it calls these functions, which fix them.

* **Key agreement**: X25519 (:class:`AgreementKey`); the shared secret is never used directly.
* **Key derivation**: HKDF-SHA256 (:func:`derive`), with the session and round in the salt and
  a purpose label in the info, so that a key derived for one round, one pair or one use is
  useless for any other.
* **Encryption of shares**: AES-256-GCM (:func:`seal`, :func:`open_sealed`) with a fresh random
  96-bit nonce per message and the associated data the protocol gives (sender, recipient,
  session, round), so a ciphertext replayed into another round or re-routed to another
  recipient fails to open. Every failure to open is the same opaque
  :class:`~veil.errors.AuthenticationError`.
* **Mask expansion**: AES-256-CTR keystream from a 32-byte seed (:func:`mask`), read as
  little-endian 32-bit words: the pseudorandom vectors that hide each input in ``Z_2^32``.
* **Signatures**: Ed25519 (:class:`SigningKey`, :func:`verify`), for the active-adversary mode.

Secrets (private keys, seeds, shared secrets) have no ``repr`` that shows them.
"""

from __future__ import annotations

import functools
import os

import numpy as np
import numpy.typing as npt
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from veil.errors import AuthenticationError, ConfigurationError, RemoteProtocolError

__all__ = [
    "AgreementKey",
    "Masker",
    "SigningKey",
    "derive",
    "mask",
    "open_sealed",
    "random_seed",
    "seal",
    "verify",
]

KEY_BYTES = 32
NONCE_BYTES = 12
_LABEL = b"veil-secagg-v1/"
_RAW = serialization.Encoding.Raw
_RAW_PUBLIC = serialization.PublicFormat.Raw


def _public_bytes(value: object, what: str, *, x25519: bool = False) -> bytes:
    if not isinstance(value, bytes | bytearray) or len(value) != KEY_BYTES:
        raise RemoteProtocolError(f"{what} must be {KEY_BYTES} raw bytes")
    if x25519 and int.from_bytes(value, "little") >= 2**255 - 19:
        # X25519 ignores the top bit: a second spelling of the same key would pass a
        # duplicate-key check made on bytes. Only the canonical encoding is accepted.
        raise RemoteProtocolError(f"{what} is not a canonical X25519 public key")
    return bytes(value)


def random_seed() -> bytes:
    """32 uniform bytes from the operating system's CSPRNG (a mask seed)."""
    return os.urandom(KEY_BYTES)


class AgreementKey:
    """An X25519 key pair for one session. ``public`` is what the peers receive."""

    __slots__ = ("_private", "public")

    def __init__(self, private: X25519PrivateKey | None = None) -> None:
        self._private = private or X25519PrivateKey.generate()
        self.public: bytes = self._private.public_key().public_bytes(_RAW, _RAW_PUBLIC)

    @classmethod
    def from_private_bytes(cls, data: bytes) -> AgreementKey:
        """For known-answer tests and for restoring a key from a secret share."""
        return cls(X25519PrivateKey.from_private_bytes(data))

    def private_bytes(self) -> bytes:
        """The raw private key (32 bytes): only to be secret-shared, never logged."""
        return self._private.private_bytes(
            _RAW, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )

    def exchange(self, peer_public: bytes) -> bytes:
        """The raw X25519 shared secret with ``peer_public``; feed it to :func:`derive`."""
        peer = X25519PublicKey.from_public_bytes(
            _public_bytes(peer_public, "a public key", x25519=True)
        )
        try:
            shared = self._private.exchange(peer)
        except ValueError:  # OpenSSL refuses the all-zero result of a low-order point
            shared = bytes(KEY_BYTES)
        if shared == bytes(KEY_BYTES):
            raise RemoteProtocolError("a peer's public key is a low-order point")
        return shared

    def __repr__(self) -> str:
        return f"AgreementKey(public={self.public.hex()[:16]}...)"


def derive(
    secret: bytes, *, session: bytes, round: int, purpose: str, length: int = KEY_BYTES
) -> bytes:
    """HKDF-SHA256 of ``secret`` with salt ``session || round`` and info ``label || purpose``."""
    if not isinstance(round, int) or round < 0:
        raise ConfigurationError(f"round must be an integer >= 0, got {round!r}")
    salt = bytes(session) + round.to_bytes(8, "big")
    info = _LABEL + purpose.encode("utf-8")
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(secret)


def seal(key: bytes, plaintext: bytes, *, associated_data: bytes) -> bytes:
    """AES-256-GCM with a fresh random nonce: ``nonce || ciphertext || tag``."""
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, associated_data)


def open_sealed(key: bytes, sealed: bytes, *, associated_data: bytes) -> bytes:
    """The plaintext of :func:`seal`'s output, or :class:`~veil.errors.AuthenticationError`
    (the same one whatever went wrong: wrong key, associated data, nonce or a changed bit)."""
    if not isinstance(sealed, bytes | bytearray) or len(sealed) < NONCE_BYTES + 16:
        raise AuthenticationError("a sealed message failed to open")
    try:
        return AESGCM(key).decrypt(
            bytes(sealed[:NONCE_BYTES]), bytes(sealed[NONCE_BYTES:]), associated_data
        )
    except InvalidTag:
        raise AuthenticationError("a sealed message failed to open") from None


def keystream(key: bytes, nonce: bytes, nbytes: int) -> bytes:
    """AES-CTR keystream of ``nbytes`` from ``key`` and the 16-byte initial counter block."""
    encryptor = Cipher(algorithms.AES(key), modes.CTR(nonce)).encryptor()
    return encryptor.update(bytes(nbytes)) + encryptor.finalize()


@functools.lru_cache(maxsize=2)
def _zeros(nbytes: int) -> bytes:
    """``nbytes`` zero bytes, the plaintext of a mask's keystream (the masks of a round share
    one length, so each length is allocated once)."""
    return bytes(nbytes)


def _expand_into(seed: bytes, out: bytearray, nbytes: int) -> None:
    if len(seed) != KEY_BYTES:
        raise ConfigurationError(f"a mask seed has {KEY_BYTES} bytes, got {len(seed)}")
    encryptor = Cipher(algorithms.AES(seed), modes.CTR(bytes(16))).encryptor()
    written = encryptor.update_into(_zeros(nbytes), out)
    if written != nbytes:  # pragma: no cover - CTR is a stream mode
        raise AssertionError("AES-CTR returned a short keystream")


def mask(seed: bytes, size: int) -> npt.NDArray[np.uint32]:
    """``size`` pseudorandom words of ``Z_2^32`` expanded from a 32-byte ``seed`` (AES-256-CTR
    from a zero counter: each seed is derived for one use, so the counter never repeats)."""
    if not isinstance(size, int) or size < 0:
        raise ConfigurationError(f"size must be an integer >= 0, got {size!r}")
    out = bytearray(4 * size + 15)  # update_into wants a block of slack
    _expand_into(seed, out, 4 * size)
    return np.frombuffer(out, dtype="<u4", count=size).astype(np.uint32, copy=False)


class Masker:
    """Adds or subtracts masks of one length into vectors of ``Z_2^32``, expanding each into
    one reused buffer (a round adds a mask per neighbour: no allocation per mask)."""

    def __init__(self, size: int) -> None:
        if not isinstance(size, int) or size < 0:
            raise ConfigurationError(f"size must be an integer >= 0, got {size!r}")
        self.size = size
        self._buffer = bytearray(4 * size + 15)
        self._words = np.frombuffer(self._buffer, dtype="<u4", count=size)

    def add(self, target: npt.NDArray[np.uint32], seed: bytes, *, subtract: bool = False) -> None:
        """``target += mask(seed)`` (or ``-=``), in place."""
        if target.shape != (self.size,) or target.dtype != np.uint32:
            raise ConfigurationError(f"the target must be {self.size} uint32 words")
        _expand_into(seed, self._buffer, 4 * self.size)
        if subtract:
            np.subtract(target, self._words, out=target)
        else:
            np.add(target, self._words, out=target)


class SigningKey:
    """An Ed25519 key pair (the active-adversary mode signs each client's public keys)."""

    __slots__ = ("_private", "public")

    def __init__(self, private: Ed25519PrivateKey | None = None) -> None:
        self._private = private or Ed25519PrivateKey.generate()
        self.public: bytes = self._private.public_key().public_bytes(_RAW, _RAW_PUBLIC)

    @classmethod
    def from_private_bytes(cls, data: bytes) -> SigningKey:
        return cls(Ed25519PrivateKey.from_private_bytes(data))

    def sign(self, message: bytes) -> bytes:
        return self._private.sign(message)

    def __repr__(self) -> str:
        return f"SigningKey(public={self.public.hex()[:16]}...)"


def verify(public: bytes, signature: bytes, message: bytes) -> None:
    """Check an Ed25519 signature, or raise :class:`~veil.errors.AuthenticationError`."""
    try:
        Ed25519PublicKey.from_public_bytes(_public_bytes(public, "a signing key")).verify(
            signature, message
        )
    except (InvalidSignature, ValueError):
        raise AuthenticationError("a signature did not verify") from None
