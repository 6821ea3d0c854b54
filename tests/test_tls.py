"""veil.tls: one folder per party, the CA key in none of them but the CA's, private keys
created owner-only."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from veil.errors import ConfigurationError
from veil.tls import TlsFiles, write_pki


def test_each_party_gets_its_own_folder_and_no_one_else_s_key(tmp_path: Path) -> None:
    pki = write_pki(tmp_path / "pki", clients=["alice", "bob"])
    root = tmp_path / "pki"
    assert sorted(p.name for p in (root / "alice").iterdir()) == [
        "alice.key",
        "alice.pem",
        "ca.pem",
    ]
    assert sorted(p.name for p in (root / "server").iterdir()) == [
        "ca.pem",
        "server.key",
        "server.pem",
    ]
    assert sorted(p.name for p in (root / "ca").iterdir()) == ["ca.key", "ca.pem"]
    assert not list(root.glob("*.key"))  # nothing secret at the top, for a careless copy
    assert TlsFiles.load(root / "alice", "alice") == pki.clients["alice"]
    assert TlsFiles.load(root / "server", "server") == pki.server
    assert TlsFiles.load(root, "bob") == pki.clients["bob"]  # the party's folder under root
    with pytest.raises(ConfigurationError, match=r"ca\.key"):
        write_pki(tmp_path / "other", clients=["ca"])


def test_private_keys_are_created_owner_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Created with mode 0600, not written with the umask's mode and narrowed afterwards (a
    moment in which anyone could open them): with chmod disabled they are private still."""
    monkeypatch.setattr(os, "chmod", lambda *args, **kwargs: None)
    old = os.umask(0)
    try:
        write_pki(tmp_path / "pki", clients=["client"])
    finally:
        os.umask(old)
    keys = list((tmp_path / "pki").rglob("*.key"))
    assert len(keys) == 3
    for key in keys:
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key
    for folder in ("ca", "server", "client"):
        assert stat.S_IMODE((tmp_path / "pki" / folder).stat().st_mode) & 0o077 == 0


def test_a_flat_folder_still_loads(tmp_path: Path) -> None:
    """Folders laid out by hand (ca.pem, NAME.pem, NAME.key) load as before."""
    pki = write_pki(tmp_path / "pki", clients=["client"])
    flat = tmp_path / "flat"
    flat.mkdir()
    (flat / "ca.pem").write_bytes(pki.server.ca)
    (flat / "coordinator.pem").write_bytes(pki.server.certificate)
    (flat / "coordinator.key").write_bytes(pki.server.private_key)
    assert TlsFiles.load(flat, "coordinator") == pki.server
