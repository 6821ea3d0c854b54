"""``veil he``: encrypted credit scoring (train, keygen, serve, score, certs)."""

from __future__ import annotations

import csv
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import typer

from veil.cli._common import console, parse_enum
from veil.errors import ConfigurationError, DataError, MissingDependencyError

app = typer.Typer(
    help="Encrypted scoring with CKKS: train a linear model, serve it over gRPC, score "
    "encrypted applicants.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
)

TLS_DIR = typer.Option(
    None,
    "--tls-dir",
    help="This party's folder from `veil he certs` (ca.pem and its own certificate and key).",
)
INSECURE = typer.Option(
    False, "--insecure", help="No TLS (allowed on loopback addresses only; for local tests)."
)


def _he() -> Any:
    try:
        import veil.he as he
    except ImportError as exc:
        raise MissingDependencyError("tenseal", "he") from exc
    return he


def _service() -> Any:
    try:
        from veil.he import service
    except ImportError as exc:
        raise MissingDependencyError("grpcio", "he") from exc
    return service


def _host_of(target: str) -> str:
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigurationError(f"--server must be HOST:PORT; got {target!r}")
    return host.strip("[]")


def _client_tls(tls_dir: Path | None, insecure: bool, host: str, name: str) -> Any:
    from veil.tls import TlsFiles

    if tls_dir is not None:
        if insecure:
            raise ConfigurationError("give either --tls-dir or --insecure, not both")
        return TlsFiles.load(tls_dir, name)
    if not insecure:
        raise ConfigurationError(
            "give --tls-dir with the certificates (make them with `veil he certs`), or "
            "--insecure for a server on this machine"
        )
    if not _service().loopback(host):
        raise ConfigurationError(f"--insecure is allowed on loopback only, not {host!r}")
    return None


@app.command("train")
def train(
    data: Path = typer.Option(..., "--data", help="CSV file with a header row."),  # noqa: B008
    target: str = typer.Option(..., "--target", help="The column to predict."),
    out: Path = typer.Option(..., "--out", help="Model file to write (JSON)."),  # noqa: B008
    kind: str = typer.Option("logistic", "--kind", help="logistic or linear."),
    positive: str | None = typer.Option(
        None, "--positive", help="The positive class of a logistic model [default: the last]."
    ),
    degree: int = typer.Option(7, "--degree", help="Degree of the sigmoid polynomial (odd)."),
    fit: str = typer.Option("chebyshev", "--fit", help="chebyshev or least-squares."),
    test_fraction: float = typer.Option(0.2, "--test-fraction", help="Rows held out."),
    seed: int = typer.Option(0, "--seed", help="Seed of the train/test split."),
    test_out: Path | None = typer.Option(  # noqa: B008
        None, "--test-out", help="Also write the held-out rows to this CSV."
    ),
) -> None:
    """Train a model in the clear (scikit-learn) and write the model file the server loads."""
    he = _he()
    rows = he.read_rows(data)
    model, test_rows = he.train_model(
        rows,
        target=target,
        kind=parse_enum(he.ModelKind, kind, "--kind"),
        positive=positive,
        degree=degree,
        method=parse_enum(he.FitMethod, fit, "--fit"),
        test_fraction=test_fraction,
        seed=seed,
    )
    model.save(out)
    if test_out is not None:
        with open(test_out, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(test_rows[0]))
            writer.writeheader()
            writer.writerows(test_rows)
    console.print(
        f"trained a {model.kind.value} model on {int(model.metrics['train_rows'])} rows: "
        f"{model.features} encoded features from {len(model.encoder.columns)} columns"
    )
    if "test_accuracy" in model.metrics:
        console.print(
            f"test accuracy {model.metrics['test_accuracy']:.3f} on "
            f"{int(model.metrics['test_rows'])} held-out rows (positive class {model.positive!r})"
        )
    else:
        console.print(f"test RMSE {model.metrics['test_rmse']:.4g}")
    lo, hi = model.logit_range
    console.print(f"training logits in [{lo:.3f}, {hi:.3f}]")
    if model.sigmoid is not None:
        s = model.sigmoid
        console.print(
            f"sigmoid polynomial for probability mode: degree {s.degree} ({s.method.value}) on "
            f"[-{s.radius:.3f}, {s.radius:.3f}], max error {s.max_error:.2e}"
        )
    console.print(f"model written to {out}")


def _spec_from(server: str | None, model: Path | None, tls: Any) -> dict[str, Any]:
    if (server is None) == (model is None):
        raise ConfigurationError("give either --server HOST:PORT or --model FILE")
    if model is not None:
        return dict(_he().LinearModel.load(model).public_spec())
    assert server is not None
    with _service().RemoteScorer(server, tls=tls) as remote:
        return dict(remote.describe())


@app.command("keygen")
def keygen(
    out: Path = typer.Option(..., "--out", help="Folder for the keys (created)."),  # noqa: B008
    server: str | None = typer.Option(
        None, "--server", help="HOST:PORT of a scoring server (its public model spec)."
    ),
    model: Path | None = typer.Option(  # noqa: B008
        None, "--model", help="A model file (only its public part is used)."
    ),
    mode: str = typer.Option("logit", "--mode", help="logit or probability."),
    batch: bool = typer.Option(False, "--batch", help="Many applicants per query."),
    tls_dir: Path | None = TLS_DIR,
    insecure: bool = INSECURE,
    tls_name: str = typer.Option("client", "--tls-name", help="Certificate name in --tls-dir."),
) -> None:
    """Make CKKS keys for a model and mode; the secret key stays in OUT."""
    he = _he()
    tls = None
    if server is not None:
        tls = _client_tls(tls_dir, insecure, _host_of(server), tls_name)
    spec = _spec_from(server, model, tls)
    chosen = parse_enum(he.Mode, mode, "--mode")
    packing = he.Packing.BATCH if batch else he.Packing.SINGLE
    start = time.perf_counter()
    client = he.ScoringClient.generate(spec, mode=chosen, packing=packing)
    bundle = client.public_bundle()
    seconds = time.perf_counter() - start
    out.mkdir(parents=True, exist_ok=True)
    secret = out / "secret.key"
    # created owner-only, never readable by others even for a moment
    fd = os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # an existing file keeps its mode through O_CREAT
    with os.fdopen(fd, "wb") as fh:
        fh.write(client.keys.save_secret())
    (out / "spec.json").write_text(json.dumps(spec, indent=2), encoding="utf-8")
    (out / "plan.json").write_text(
        json.dumps({"mode": chosen.value, "packing": packing.value}), encoding="utf-8"
    )
    p = client.plan.params
    console.print(
        f"keys for {chosen.value} mode, {packing.value} packing: N={p.poly_modulus_degree}, "
        f"modulus {list(p.coeff_modulus_bits)} ({p.total_bits} bits, 128-bit secure), "
        f"{len(client.plan.rotations)} rotation keys, relinearisation "
        f"{'yes' if client.plan.relinearization else 'no'}"
    )
    console.print(
        f"public bundle {_size(len(bundle))} (uploaded once per session); made in "
        f"{seconds:.2f} s; secret key in {secret} (keep it private)"
    )


def _size(n: int) -> str:
    return f"{n / 2**20:.2f} MiB" if n >= 2**20 else f"{n / 2**10:.1f} KiB"


def _load_client(keys: Path) -> Any:
    he = _he()
    try:
        spec = json.loads((keys / "spec.json").read_text(encoding="utf-8"))
        plan = json.loads((keys / "plan.json").read_text(encoding="utf-8"))
        secret = (keys / "secret.key").read_bytes()
    except FileNotFoundError as exc:
        raise ConfigurationError(
            f"{keys} is not a key folder (missing {Path(exc.filename).name}); "
            "make one with `veil he keygen`"
        ) from None
    except ValueError:
        raise ConfigurationError(f"{keys} holds a damaged spec.json or plan.json") from None
    mode = he.Mode(plan["mode"])
    packing = he.Packing(plan["packing"])
    keys_obj = he.default_backend().load_client(secret)
    return he.ScoringClient(spec, he.ScoringPlan.for_spec(spec, mode, packing), keys_obj)


@app.command("score")
def score(
    server: str = typer.Option(..., "--server", help="HOST:PORT of the scoring server."),
    input_: Path = typer.Option(..., "--input", help="CSV of applicants."),  # noqa: B008
    keys: Path = typer.Option(..., "--keys", help="Folder from `veil he keygen`."),  # noqa: B008
    out: Path | None = typer.Option(  # noqa: B008
        None, "--out", help="CSV of scores to write [default: print the first ones]."
    ),
    tls_dir: Path | None = TLS_DIR,
    insecure: bool = INSECURE,
    tls_name: str = typer.Option("client", "--tls-name", help="Certificate name in --tls-dir."),
) -> None:
    """Score applicants encrypted: only this machine sees their features and their scores."""
    he = _he()
    tls = _client_tls(tls_dir, insecure, _host_of(server), tls_name)
    client = _load_client(keys)
    rows = he.read_rows(input_)
    x = client.encode(rows)  # bad rows fail here, before anything is sent
    with _service().RemoteScorer(server, tls=tls) as remote:
        if remote.describe() != client.spec:
            raise ConfigurationError(
                "the server's model differs from the one these keys were made for; "
                "run `veil he keygen --server ...` again"
            )
        start = time.perf_counter()
        session = remote.open(client)
        upload = time.perf_counter() - start
        start = time.perf_counter()
        results = [remote.score(session, q) for q in client.encrypt(x)]
        seconds = time.perf_counter() - start
        remote.close_session(session)
    values = client.read(results, len(rows))
    scores = client.scores(values)
    kind = client.spec.get("kind")
    label = "probability" if kind == "logistic" else "score"
    if out is not None:
        with open(out, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(["row", label])
            for i, v in enumerate(scores, start=1):
                writer.writerow([i, f"{v:.8g}"])
    else:
        for i, v in enumerate(scores[:10], start=1):
            console.print(f"row {i}: {label} {v:.6f}")
    console.print(
        f"scored {len(rows)} applicants encrypted ({client.plan.mode.value} mode, "
        f"{client.plan.packing.value} packing) in {seconds:.2f} s "
        f"({seconds / len(rows) * 1000:.1f} ms per applicant, round trips included); "
        f"keys uploaded in {upload:.2f} s"
        + (f"; scores written to {out}" if out is not None else "")
    )


@app.command("serve")
def serve(
    model: Path = typer.Option(..., "--model", help="Model file from `veil he train`."),  # noqa: B008
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
    port: int = typer.Option(50051, "--port", help="Port (0: any free port)."),
    workers: int = typer.Option(2, "--workers", help="Worker processes (SEAL holds the GIL)."),
    tls_dir: Path | None = TLS_DIR,
    insecure: bool = INSECURE,
    max_key_mib: int = typer.Option(64, "--max-key-mib", help="Largest key bundle accepted."),
    allow_batch: bool = typer.Option(
        False,
        "--allow-batch",
        help="Also score batches. Batch mode gives the whole model to the client (unit vectors "
        "as applicants return every weight): for trusted clients only.",
    ),
) -> None:
    """Serve encrypted scoring for MODEL until interrupted. Holds no secret key."""
    service = _service()
    from veil.tls import TlsFiles

    tls = None
    if tls_dir is not None:
        if insecure:
            raise ConfigurationError("give either --tls-dir or --insecure, not both")
        tls = TlsFiles.load(tls_dir, "server")
    elif not insecure:
        raise ConfigurationError(
            "give --tls-dir with server.pem, server.key and ca.pem (make them with "
            "`veil he certs`), or --insecure on a loopback address"
        )
    elif not service.loopback(host):
        raise ConfigurationError(f"--insecure is allowed on loopback only, not {host!r}")
    if max_key_mib < 1:
        raise ConfigurationError(f"--max-key-mib must be >= 1; got {max_key_mib}")
    config = service.ServerConfig(
        model_path=str(model),
        host=host,
        port=port,
        workers=workers,
        tls=tls,
        insecure=tls is None,
        max_key_bytes=max_key_mib << 20,
        allow_batch=allow_batch,
    )
    server = service.ScoringServer(config).start()
    console.print(
        f"serving {model} on {host}:{server.port} with {workers} worker processes "
        f"({'mutual TLS' if tls else 'no TLS, loopback'}"
        f"{'; batches allowed: the model is readable by clients' if allow_batch else ''}); "
        "Ctrl-C stops"
    )

    def stop(*_: object) -> None:
        server.stop()

    signal.signal(signal.SIGTERM, stop)
    try:
        server.wait()
    finally:
        server.stop()


@app.command("certs")
def certs(
    out: Path = typer.Option(..., "--out", help="Folder for the PEM files."),  # noqa: B008
    host: list[str] = typer.Option(  # noqa: B008
        ["localhost", "127.0.0.1"], "--host", help="A name the server answers to (repeatable)."
    ),
    client: list[str] = typer.Option(  # noqa: B008
        ["client"], "--client", help="A client certificate to issue (repeatable)."
    ),
) -> None:
    """A private CA, a server certificate and client certificates for mutual TLS."""
    from veil.tls import write_pki

    if not host:
        raise DataError("name at least one --host")
    pki = write_pki(out, hosts=host, clients=client)
    console.print(
        f"wrote one folder per party to {out}: ca/ (the CA's key: keep it where certificates "
        f"are issued, give it to no one), server/ ({', '.join(host)}; for `veil he serve "
        f"--tls-dir {out / 'server'}`) and "
        f"{', '.join(f'{c}/' for c in pki.clients)} (give each client its own folder only)"
    )
