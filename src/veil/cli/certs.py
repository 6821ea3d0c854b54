"""``veil certs``: the consortium's certificate authority and the certificates it issues."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from veil.cli._common import console
from veil.errors import ConfigurationError

app = typer.Typer(
    help="Certificates for mutual TLS: a consortium CA, and one certificate per party.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
)

DIR = typer.Option(Path("pki"), "--dir", help="Folder of the CA (ca.pem, ca.key).")


def _write(path: Path, data: bytes, *, private: bool) -> None:
    if private:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
    else:
        path.write_bytes(data)


@app.command("init")
def init(
    folder: Path = DIR,
    name: str = typer.Option("veil consortium CA", "--name", help="The CA's common name."),
    days: int = typer.Option(730, "--days", help="Validity of the CA certificate."),
    force: bool = typer.Option(False, "--force", help="Replace an existing CA."),
) -> None:
    """Create the consortium CA: ca.pem (give it to every party) and ca.key (keep it offline)."""
    from veil.tls import make_ca

    folder.mkdir(parents=True, exist_ok=True)
    if (folder / "ca.key").exists() and not force:
        raise ConfigurationError(
            f"{folder / 'ca.key'} exists; every certificate it issued would stop working if "
            "it were replaced (use --force to do so anyway)"
        )
    cert, key = make_ca(name, days=days)
    _write(folder / "ca.pem", cert, private=False)
    _write(folder / "ca.key", key, private=True)
    console.print(f"wrote {folder / 'ca.pem'} and {folder / 'ca.key'} (private: keep it offline)")


@app.command("issue")
def issue(
    name: str = typer.Option(..., "--name", help="The party's name, e.g. hospital-a."),
    folder: Path = DIR,
    host: list[str] = typer.Option(  # noqa: B008
        [], "--host", help="A server certificate for this DNS name or IP (repeat for more)."
    ),
    out: Path | None = typer.Option(  # noqa: B008
        None, "--out", help="Where to write NAME.pem and NAME.key [default: --dir]."
    ),
    days: int = typer.Option(365, "--days", help="Validity in days."),
) -> None:
    """Issue NAME.pem and NAME.key signed by the CA: a client certificate, or with --host a
    server certificate (for the coordinator). The certificate's common name is NAME."""
    from veil import tls

    _plain_name(name)
    try:
        ca_cert = (folder / "ca.pem").read_bytes()
        ca_key = (folder / "ca.key").read_bytes()
    except FileNotFoundError:
        raise ConfigurationError(
            f"no CA in {folder}: run `veil certs init --dir {folder}` first"
        ) from None
    cert, key = tls.issue(ca_cert, ca_key, name, hosts=host, client=not host, days=days)
    target = out or folder
    target.mkdir(parents=True, exist_ok=True)
    _write(target / f"{name}.pem", cert, private=False)
    _write(target / f"{name}.key", key, private=True)
    kind = f"server certificate for {', '.join(host)}" if host else "client certificate"
    console.print(f"wrote {target / (name + '.pem')} and {target / (name + '.key')} ({kind})")


def _plain_name(name: str) -> None:
    if not name or any(c in name for c in "/\\\0") or name.startswith("."):
        raise ConfigurationError(f"--name must be a plain name like hospital-a, got {name!r}")


@app.command("signing-key")
def signing_key(
    name: str = typer.Option(..., "--name", help="The hospital's name, e.g. hospital-a."),
    folder: Path = typer.Option(  # noqa: B008
        Path("pki"), "--dir", help="Where to write NAME.sign.key and NAME.sign.pub."
    ),
) -> None:
    """For secure aggregation's active mode, at the hospital: NAME.sign.key (private, stays
    here) and NAME.sign.pub (its public key: give it to the consortium for the roster)."""
    from veil.deploy.roster import make_signing_key

    _plain_name(name)
    public = make_signing_key(folder, name)
    console.print(f"wrote {folder / (name + '.sign.key')} (private) and {public}")


@app.command("roster")
def roster(
    name: list[str] = typer.Option(  # noqa: B008
        ..., "--name", help="An enrolled hospital (repeat for each); reads NAME.sign.pub."
    ),
    folder: Path = typer.Option(  # noqa: B008
        Path("pki"), "--dir", help="Folder of the NAME.sign.pub files."
    ),
    out: Path | None = typer.Option(  # noqa: B008
        None, "--out", help="The roster file [default: DIR/roster.json]."
    ),
) -> None:
    """The consortium's roster (every hospital's public signing key), for the coordinator's
    [secure_aggregation] roster and every agent's --roster."""
    from veil.deploy.roster import write_roster

    for n in name:
        _plain_name(n)
    target = out or folder / "roster.json"
    write_roster(folder, name, target)
    console.print(f"wrote {target} ({len(name)} hospitals)")


__all__ = ["app"]
