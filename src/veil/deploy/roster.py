"""The consortium's roster for secure aggregation's active mode: each hospital's Ed25519
signing key, and the file of everyone's public keys that each party pins.

In the active mode a client signs its round keys and the survivor lists with a long-term
signing key; every client checks the others' signatures against the roster it was given by
the consortium (not by the coordinator), so a coordinator cannot slip in clients of its own
or show different survivor lists to different clients. Files:

* ``<name>.sign.key``: the hospital's private signing key (PKCS#8 PEM, mode 0600), made at the
  hospital by ``veil certs signing-key``; it never leaves it;
* ``<name>.sign.pub``: its public key (64 hex digits), handed to the consortium;
* ``roster.json``: ``{"hospital-a": "<64 hex digits>", ...}``, made by ``veil certs roster``
  from the ``.sign.pub`` files and given to the coordinator and every agent.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from veil.errors import ConfigurationError
from veil.secagg.crypto import KEY_BYTES, SigningKey

__all__ = ["load_roster", "load_signing_key", "make_signing_key", "write_roster"]


def make_signing_key(folder: Path, name: str) -> Path:
    """Write ``<name>.sign.key`` (private, 0600) and ``<name>.sign.pub``; the public file."""
    folder.mkdir(parents=True, exist_ok=True)
    key_path = folder / f"{name}.sign.key"
    if key_path.exists():
        raise ConfigurationError(
            f"{key_path} exists; the roster names its public key (move it away to replace it, "
            "and have the roster updated)"
        )
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    pub_path = folder / f"{name}.sign.pub"
    pub_path.write_text(SigningKey(private).public.hex() + "\n")
    return pub_path


def load_signing_key(path: Path) -> SigningKey:
    try:
        private = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except FileNotFoundError:
        raise ConfigurationError(f"signing key {path} does not exist") from None
    except (ValueError, TypeError):
        raise ConfigurationError(f"{path} is not a PEM private key") from None
    if not isinstance(private, Ed25519PrivateKey):
        raise ConfigurationError(f"{path} is not an Ed25519 key (`veil certs signing-key`)")
    return SigningKey(private)


def _public(value: object, where: str) -> bytes:
    try:
        key = bytes.fromhex(str(value).strip())
    except ValueError:
        key = b""
    if len(key) != KEY_BYTES:
        raise ConfigurationError(f"{where}: an Ed25519 public key is {2 * KEY_BYTES} hex digits")
    return key


def write_roster(folder: Path, names: Iterable[str], out: Path) -> dict[str, bytes]:
    """``out`` from ``folder/<name>.sign.pub`` of each name."""
    roster = {}
    for name in names:
        path = folder / f"{name}.sign.pub"
        if not path.exists():
            raise ConfigurationError(f"{path} is missing (`veil certs signing-key --name {name}`)")
        roster[name] = _public(path.read_text(), str(path))
    if len(set(roster.values())) != len(roster):
        raise ConfigurationError("two names in the roster share a signing key")
    out.write_text(json.dumps({k: v.hex() for k, v in sorted(roster.items())}, indent=2) + "\n")
    return roster


def load_roster(path: Path) -> dict[str, bytes]:
    """The roster ``{name: Ed25519 public key}``; one clear error for anything wrong in it."""
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigurationError(f"roster {path} does not exist") from None
    except ValueError as exc:
        raise ConfigurationError(f"roster {path} is not JSON: {exc}") from None
    if not isinstance(raw, dict) or not raw:
        raise ConfigurationError(f"roster {path} must map names to public keys")
    roster = {str(name): _public(key, f"roster {path}, {name}") for name, key in raw.items()}
    if len(set(roster.values())) != len(roster):
        raise ConfigurationError(f"roster {path}: two names share a signing key")
    return roster
