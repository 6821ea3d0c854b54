"""``veil fl serve|join|status``: the federation over gRPC (registered in ``veil fl``)."""

from __future__ import annotations

import json
import logging
import signal
import sys
from pathlib import Path
from typing import Any

import typer

from veil.cli._common import console, err_console, print_json
from veil.errors import ConfigurationError, MissingDependencyError, ProtocolError

INSECURE = typer.Option(
    False,
    "--insecure",
    help="No TLS and no authentication (loopback only; for trying things out).",
)


def _deploy() -> Any:
    try:
        import veil.deploy as deploy
    except ImportError as exc:
        raise MissingDependencyError("grpcio", "deploy") from exc
    return deploy


def _log_to_stderr() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    for name in ("veil.deploy", "veil.deploy.agent"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(logging.INFO)
        logger.propagate = False


def _loopback(host: str) -> bool:
    import ipaddress

    if host in ("localhost", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _warn_insecure() -> None:
    err_console.print(
        "WARNING: --insecure: no TLS, no authentication; anyone who can reach the port can "
        "claim to be any client. Never use this outside one machine.",
        markup=False,
    )


def _tls(cert: Path, key: Path | None, ca: Path | None) -> Any:
    from veil.tls import TlsFiles

    key = key or cert.with_suffix(".key")
    ca = ca or cert.parent / "ca.pem"
    try:
        return TlsFiles(ca.read_bytes(), cert.read_bytes(), key.read_bytes())
    except FileNotFoundError as exc:
        raise ConfigurationError(
            f"{exc.filename} does not exist; give --cert (and --key, --ca) from `veil certs issue`"
        ) from None


def serve(
    config: Path = typer.Option(..., "--config", help="The federation's TOML file."),  # noqa: B008
    insecure: bool = INSECURE,
    port: int | None = typer.Option(
        None, "--port", help="Override the port of [federation] listen."
    ),
) -> None:
    """Run the coordinator until the federation's last round (resuming from its checkpoint)."""
    deploy = _deploy()
    cfg = deploy.load_config(config)
    tls = None
    if insecure:
        host = cfg.listen.rpartition(":")[0]
        if not _loopback(host):
            raise ConfigurationError(f"--insecure is allowed on loopback only, not {host!r}")
        _warn_insecure()
    else:
        if cfg.tls_dir is None:
            raise ConfigurationError(
                f"{config}: [tls] dir is required (the folder from `veil certs init`), or "
                "--insecure on loopback"
            )
        from veil.tls import TlsFiles

        for needed in ("ca.pem", f"{cfg.tls_name}.pem", f"{cfg.tls_name}.key"):
            if not any((d / needed).exists() for d in (cfg.tls_dir, cfg.tls_dir / cfg.tls_name)):
                raise ConfigurationError(
                    f"TLS folder {cfg.tls_dir} lacks {needed}; make the consortium's CA with "
                    f"`veil certs init` and this certificate with `veil certs issue --name "
                    f"{cfg.tls_name} --host <the coordinator's address>`"
                )
        tls = TlsFiles.load(cfg.tls_dir, cfg.tls_name)
    _log_to_stderr()
    coordinator = deploy.Coordinator(cfg, tls=tls, insecure=insecure, port=port)

    def _stop(signum: int, _frame: Any) -> None:
        coordinator.stop(grace=0.5)
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _stop)
    coordinator.start()
    console.print(f"coordinator of {cfg.name} listening on port {coordinator.port}")
    try:
        coordinator.wait()
        coordinator.linger(min(cfg.stage_seconds, 10.0))
    finally:
        status = coordinator.status()
        coordinator.stop(grace=2.0)
    if coordinator.error:
        raise ProtocolError(f"the federation stopped: {coordinator.error}")
    if coordinator.stopped:
        console.print(f"stopped before round {status['round'] + 1}: {coordinator.stopped}")
    console.print(
        f"finished {status['round']} of {status['rounds']} rounds; "
        f"received {status['bytes_received']} B, sent {status['bytes_sent']} B"
    )


def join(
    server: str = typer.Option(..., "--server", help="The coordinator, HOST:PORT."),
    data: Path = typer.Option(..., "--data", help="Local data: .npz (x, y) or CSV."),  # noqa: B008
    cert: Path | None = typer.Option(  # noqa: B008
        None, "--cert", help="This hospital's certificate (from `veil certs issue`)."
    ),
    key: Path | None = typer.Option(  # noqa: B008
        None, "--key", help="Its private key [default: the certificate's path with .key]."
    ),
    ca: Path | None = typer.Option(  # noqa: B008
        None, "--ca", help="The consortium CA [default: ca.pem next to the certificate]."
    ),
    target: str = typer.Option("label", "--target", help="The label column of a CSV file."),
    name: str | None = typer.Option(None, "--name", help="The client's name (--insecure only)."),
    insecure: bool = INSECURE,
    retry: float = typer.Option(
        300.0, "--retry-seconds", help="Keep retrying an unreachable coordinator this long."
    ),
    secure_aggregation: str | None = typer.Option(
        None,
        "--secure-aggregation",
        help="secagg or secagg+: the federation's setting as agreed; each round's graph and "
        "threshold are checked against it [default: trust the coordinator's].",
    ),
    dropout: float = typer.Option(
        0.1, "--dropout", help="The agreed dropout rate (with --secure-aggregation)."
    ),
    distributed_dp: float | None = typer.Option(
        None,
        "--distributed-dp",
        help="Under distributed DP: the agreed noise multiplier; less noise is refused.",
    ),
    state: Path | None = typer.Option(  # noqa: B008
        None,
        "--state",
        help="The agent's record of the rounds it took part in (kept across restarts) "
        "[default: next to --cert, <cert>.rounds.json; with --insecure, <name>.rounds.json].",
    ),
    roster: Path | None = typer.Option(  # noqa: B008
        None,
        "--roster",
        help="The consortium's roster of signing keys (`veil certs roster`): runs secure "
        "aggregation's active mode, refusing clients the roster does not name.",
    ),
    signing_key: Path | None = typer.Option(  # noqa: B008
        None, "--signing-key", help="This hospital's NAME.sign.key (with --roster)."
    ),
    allow_plain: bool = typer.Option(
        False,
        "--allow-plain-updates",
        help="Take part in a federation without secure aggregation (the coordinator then "
        "sees this hospital's model updates). Refused by default.",
    ),
    straggle: float = typer.Option(0.0, "--straggle", hidden=True),
) -> None:
    """Join a federation as a client agent: train on local data in each round until the end."""
    deploy = _deploy()
    host = server.rpartition(":")[0]
    if insecure:
        if not _loopback(host):
            raise ConfigurationError(f"--insecure is allowed on loopback only, not {host!r}")
        if not name:
            raise ConfigurationError("--insecure needs --name (there is no certificate to say it)")
        _warn_insecure()
        tls = None
    else:
        if cert is None:
            raise ConfigurationError("give --cert (from `veil certs issue`), or --insecure")
        tls = _tls(cert, key, ca)
    settings = None
    if secure_aggregation is not None:
        from veil.federated import SecureAggregation

        if secure_aggregation not in ("secagg", "secagg+"):
            raise ConfigurationError(
                f"--secure-aggregation must be secagg or secagg+, got {secure_aggregation!r}"
            )
        settings = SecureAggregation(
            graph=secure_aggregation,  # type: ignore[arg-type]
            dropout=dropout,
            distributed_dp=distributed_dp is not None,
            active=roster is not None,
        )
    elif distributed_dp is not None:
        raise ConfigurationError("--distributed-dp needs --secure-aggregation")
    if (roster is None) != (signing_key is None) or (roster and secure_aggregation is None):
        raise ConfigurationError(
            "the active mode needs --roster, --signing-key and --secure-aggregation together"
        )
    from veil.deploy.roster import load_roster, load_signing_key

    pinned = None if roster is None else load_roster(roster)
    sign_with = None if signing_key is None else load_signing_key(signing_key)
    if state is None:
        state = Path(f"{name}.rounds.json") if cert is None else cert.with_suffix(".rounds.json")
    x, y = deploy.load_data(data, target=target)
    _log_to_stderr()
    agent = deploy.Agent(
        server,
        x=x,
        y=y,
        tls=tls,
        name=name or "",
        retry_seconds=retry,
        straggle=straggle,
        secure=settings,
        noise_multiplier=distributed_dp,
        guard_file=state,
        allow_plain=allow_plain,
        roster=pinned,
        signing_key=sign_with,
    )
    report = agent.run()
    console.print(
        f"{agent.client_id}: took part in rounds {report.rounds or '-'}; missed "
        f"{report.missed or '-'}; sent {report.bytes_sent} B, received {report.bytes_received} B"
    )


def status(
    server: str | None = typer.Option(None, "--server", help="The coordinator, HOST:PORT."),
    state: Path | None = typer.Option(  # noqa: B008
        None, "--state", help="Read the coordinator's database instead (on its machine)."
    ),
    cert: Path | None = typer.Option(None, "--cert", help="A certificate of the consortium."),  # noqa: B008
    key: Path | None = typer.Option(None, "--key", help="Its private key."),  # noqa: B008
    ca: Path | None = typer.Option(None, "--ca", help="The consortium CA."),  # noqa: B008
    name: str | None = typer.Option(None, "--name", help="Client name (--insecure only)."),
    insecure: bool = INSECURE,
) -> None:
    """Show a federation's progress: round, stage, clients last seen, per-round metrics."""
    if state is not None:
        deploy = _deploy()
        if not state.exists():
            raise ConfigurationError(f"{state} does not exist")
        store = deploy.StateStore(state)
        try:
            print_json({"state": str(state), "rounds": store.history()})
        finally:
            store.close()
        return
    if server is None:
        raise ConfigurationError("give --server HOST:PORT (or --state FILE on the coordinator)")
    _deploy()
    import grpc

    from veil.deploy.proto import federation_pb2 as pb

    if insecure:
        if not name:
            raise ConfigurationError("--insecure needs --name")
        channel = grpc.insecure_channel(server)
        metadata: tuple[tuple[str, str], ...] = (("veil-client", name),)
    else:
        if cert is None:
            raise ConfigurationError("give --cert (from `veil certs issue`), or --insecure")
        tls = _tls(cert, key, ca)
        creds = grpc.ssl_channel_credentials(tls.ca, tls.private_key, tls.certificate)
        channel = grpc.secure_channel(server, creds)
        metadata = ()
    call = channel.unary_unary(
        "/veil.fl.v1.Coordinator/Status",
        request_serializer=pb.StatusRequest.SerializeToString,
        response_deserializer=pb.StatusReply.FromString,
    )
    try:
        reply = call(pb.StatusRequest(), timeout=10.0, metadata=metadata)
    except grpc.RpcError as exc:
        raise ProtocolError(
            f"the coordinator at {server} did not answer: {exc.code().name}: {exc.details()}"
        ) from None
    finally:
        channel.close()
    print_json(json.loads(reply.json))


__all__ = ["join", "serve", "status"]
