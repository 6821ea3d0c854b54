"""Certificates for mutual TLS between veil's services and their clients.

A small private certificate authority for a deployment (or a test) with ``cryptography``'s X.509
builder: one CA, server certificates naming the hosts they serve, client certificates naming the
party. Keys are ECDSA P-256; certificates last ``days`` (default a year). Production deployments
may bring their own PKI instead: the services only read PEM files.

    pki = write_pki("certs/", hosts=["localhost", "127.0.0.1"], clients=["client"])
    # certs/ca/{ca.pem, ca.key}              the CA: stays with whoever issues certificates
    # certs/server/{ca.pem, server.pem, server.key}   give this folder to the server
    # certs/client/{ca.pem, client.pem, client.key}   and this one to the client

One folder per party, so that handing a party its folder hands it nothing of anyone else's:
the CA's key in particular lives only in ``ca/``. Private keys and the folders are created
owner-only (``os.open(..., 0o600)``), never written first and narrowed afterwards.
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import os
import re
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from veil.errors import ConfigurationError

__all__ = ["Pki", "TlsFiles", "issue", "make_ca", "write_pki"]


@dataclasses.dataclass(frozen=True)
class TlsFiles:
    """PEM bytes for one side of a mutual-TLS connection: the CA that authenticates the peer,
    our certificate chain and our private key."""

    ca: bytes
    certificate: bytes
    private_key: bytes

    def __repr__(self) -> str:
        return "TlsFiles(ca=..., certificate=..., private_key=<hidden>)"

    @classmethod
    def load(cls, folder: str | Path, name: str) -> TlsFiles:
        """``ca.pem``, ``<name>.pem`` and ``<name>.key`` from ``folder``, or from
        ``folder/<name>/`` if ``folder`` is the root that :func:`write_pki` wrote."""
        folder = Path(folder)
        if not (folder / f"{name}.pem").exists() and (folder / name / f"{name}.pem").exists():
            folder = folder / name
        try:
            return cls(
                ca=(folder / "ca.pem").read_bytes(),
                certificate=(folder / f"{name}.pem").read_bytes(),
                private_key=(folder / f"{name}.key").read_bytes(),
            )
        except FileNotFoundError as exc:
            raise ConfigurationError(
                f"TLS folder {folder} lacks {Path(exc.filename).name}; expected ca.pem, "
                f"{name}.pem and {name}.key (make them with `veil he certs`)"
            ) from None


@dataclasses.dataclass(frozen=True)
class Pki:
    """What :func:`write_pki` wrote: ``folder/ca``, ``folder/server``, ``folder/<client>``."""

    folder: Path
    server: TlsFiles
    clients: dict[str, TlsFiles]

    def party(self, name: str) -> Path:
        """The folder to hand to ``name`` (``"server"`` or a client)."""
        return self.folder / name


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def make_ca(common_name: str = "veil CA", *, days: int = 365) -> tuple[bytes, bytes]:
    """A self-signed CA: ``(certificate PEM, private key PEM)``."""
    key = _key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), _pem_key(key)


def issue(
    ca_cert: bytes,
    ca_key: bytes,
    common_name: str,
    *,
    hosts: Sequence[str] = (),
    client: bool = False,
    days: int = 365,
) -> tuple[bytes, bytes]:
    """A certificate signed by the CA, for a server (naming ``hosts``) or a client."""
    if not client and not hosts:
        raise ConfigurationError("a server certificate must name at least one host")
    issuer = x509.load_pem_x509_certificate(ca_cert)
    signer = serialization.load_pem_private_key(ca_key, password=None)
    if not isinstance(signer, ec.EllipticCurvePrivateKey):
        raise ConfigurationError("the CA key must be an EC key made by veil.tls.make_ca")
    key = _key()
    now = datetime.datetime.now(datetime.UTC)
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(issuer.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    cert = builder.sign(signer, hashes.SHA256())
    return cert.public_bytes(serialization.Encoding.PEM), _pem_key(key)


def write_pki(
    folder: str | Path,
    *,
    hosts: Sequence[str] = ("localhost", "127.0.0.1"),
    clients: Sequence[str] = ("client",),
    days: int = 365,
) -> Pki:
    """A CA, a server certificate for ``hosts`` and one certificate per client, written to
    ``folder`` one subfolder per party (``ca/``, ``server/``, ``<client>/``, each 0700, with
    private keys created 0600); see the module text."""
    clash = sorted({"ca", "server"} & set(clients))
    bad = [c for c in clients if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", c)]
    if bad:
        raise ConfigurationError(
            f"client names become folder names: letters, digits, '.', '_' and '-' only; got "
            f"{bad[0]!r}"
        )
    if clash or len(set(clients)) != len(clients):
        raise ConfigurationError(
            f"client names must be distinct and not 'ca' or 'server' (the CA's folder holds "
            f"ca.key, the server's server.key); got {', '.join(clash) or 'a repeated name'}"
        )
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    ca_cert, ca_key = make_ca(days=days)

    def write(party: str, name: str, data: bytes, private: bool = False) -> None:
        sub = out / party
        sub.mkdir(mode=0o700, exist_ok=True)
        os.chmod(sub, 0o700)  # (mkdir's mode is narrowed by the umask, never widened)
        if private:
            # created owner-only: no moment in which the key is readable by others
            fd = os.open(sub / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.fchmod(fd, 0o600)  # an existing file keeps its mode through O_CREAT
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
        else:
            (sub / name).write_bytes(data)

    write("ca", "ca.pem", ca_cert)
    write("ca", "ca.key", ca_key, private=True)
    cert, key = issue(ca_cert, ca_key, "veil server", hosts=hosts, days=days)
    write("server", "ca.pem", ca_cert)
    write("server", "server.pem", cert)
    write("server", "server.key", key, private=True)
    server = TlsFiles(ca_cert, cert, key)
    issued: dict[str, TlsFiles] = {}
    for name in clients:
        cert, key = issue(ca_cert, ca_key, name, client=True, days=days)
        write(name, "ca.pem", ca_cert)
        write(name, f"{name}.pem", cert)
        write(name, f"{name}.key", key, private=True)
        issued[name] = TlsFiles(ca_cert, cert, key)
    return Pki(out, server, issued)
