"""Certificates for mutual TLS between veil's services and their clients.

A small private certificate authority for a deployment (or a test) with ``cryptography``'s X.509
builder: one CA, server certificates naming the hosts they serve, client certificates naming the
party. Keys are ECDSA P-256; certificates last ``days`` (default a year). Production deployments
may bring their own PKI instead: the services only read PEM files.

    pki = write_pki("certs/", hosts=["localhost", "127.0.0.1"], clients=["client"])
    # certs/ca.pem, certs/server.pem, certs/server.key, certs/client.pem, certs/client.key
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import os
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
        """``ca.pem``, ``<name>.pem`` and ``<name>.key`` from ``folder``."""
        folder = Path(folder)
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
    folder: Path
    server: TlsFiles
    clients: dict[str, TlsFiles]


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
    ``folder`` (private keys readable by the owner only)."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    ca_cert, ca_key = make_ca(days=days)

    def write(name: str, data: bytes, private: bool = False) -> None:
        path = out / name
        path.write_bytes(data)
        if private:
            os.chmod(path, 0o600)

    write("ca.pem", ca_cert)
    write("ca.key", ca_key, private=True)
    cert, key = issue(ca_cert, ca_key, "veil server", hosts=hosts, days=days)
    write("server.pem", cert)
    write("server.key", key, private=True)
    server = TlsFiles(ca_cert, cert, key)
    issued: dict[str, TlsFiles] = {}
    for name in clients:
        cert, key = issue(ca_cert, ca_key, name, client=True, days=days)
        write(f"{name}.pem", cert)
        write(f"{name}.key", key, private=True)
        issued[name] = TlsFiles(ca_cert, cert, key)
    return Pki(out, server, issued)
