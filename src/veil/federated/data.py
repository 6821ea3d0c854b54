"""Federated data: partitioners that split a data set among clients, and the bundled data sets.

Partitioners return one array of example indices per client; every example goes to exactly one
client:

* :func:`iid` shuffles and deals the examples out evenly;
* :func:`dirichlet` gives each class's examples to clients in proportions drawn from
  ``Dirichlet(alpha)`` (Hsu et al. 2019): small ``alpha`` means each client sees few classes;
* :func:`quantity_skew` keeps the label mix but draws client sizes from ``Dirichlet(alpha)``;
* :func:`natural` uses an id column (a speaking role, a hospital, a user).

A :class:`FederatedData` holds the pooled tensors, the partition, and a held-out test set.
The data sets are breast cancer and digits (bundled with scikit-learn), Fashion-MNIST (from
Debian's ``dataset-fashion-mnist``, if installed) and Shakespeare's plays split by speaking role
(bundled with veil, as in the LEAF benchmark).
"""

from __future__ import annotations

import dataclasses
import gzip
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch

from veil.errors import ConfigurationError, DataError, MissingDependencyError
from veil.federated.training import ClientData, Cohort

__all__ = [
    "FederatedData",
    "breast_cancer",
    "digits",
    "dirichlet",
    "fashion_mnist",
    "iid",
    "natural",
    "quantity_skew",
    "shakespeare",
]

Indices = npt.NDArray[np.int64]

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")


def _check_clients(clients: int, n: int) -> None:
    if not isinstance(clients, int) or clients < 1:
        raise ConfigurationError(f"clients must be an integer >= 1, got {clients!r}")
    if clients > n:
        raise ConfigurationError(f"cannot split {n} examples among {clients} clients")


def iid(n: int, clients: int, *, rng: np.random.Generator) -> list[Indices]:
    """Shuffle ``n`` examples and deal them out evenly (sizes differ by at most one)."""
    _check_clients(clients, n)
    return [np.sort(part) for part in np.array_split(rng.permutation(n), clients)]


def dirichlet(
    labels: npt.ArrayLike,
    clients: int,
    *,
    alpha: float,
    rng: np.random.Generator,
    min_size: int = 10,
    max_tries: int = 100,
) -> list[Indices]:
    """Label skew: each class is split among clients in ``Dirichlet(alpha)`` proportions.

    Redrawn (up to ``max_tries`` times) until every client has at least ``min_size`` examples.
    """
    y = np.asarray(labels).reshape(-1)
    _check_clients(clients, y.size)
    if not isinstance(alpha, int | float) or not alpha > 0:
        raise ConfigurationError(f"alpha must be > 0, got {alpha!r}")
    if clients * min_size > y.size:
        raise ConfigurationError(
            f"{clients} clients with at least {min_size} examples each need "
            f"{clients * min_size} examples; there are {y.size}"
        )
    classes = np.unique(y)
    for _ in range(max_tries):
        parts: list[list[int]] = [[] for _ in range(clients)]
        for cls in classes:
            members = rng.permutation(np.flatnonzero(y == cls))
            shares = rng.dirichlet(np.full(clients, float(alpha)))
            cuts = (np.cumsum(shares)[:-1] * members.size).astype(int)
            for part, chunk in zip(parts, np.split(members, cuts), strict=True):
                part.extend(chunk.tolist())
        if min(len(p) for p in parts) >= min_size:
            return [np.sort(np.array(p, dtype=np.int64)) for p in parts]
    raise ConfigurationError(
        f"Dirichlet(alpha={alpha}) left a client with fewer than {min_size} examples in "
        f"{max_tries} draws; raise alpha or lower min_size"
    )


def quantity_skew(
    n: int, clients: int, *, alpha: float, rng: np.random.Generator, min_size: int = 1
) -> list[Indices]:
    """Client sizes in ``Dirichlet(alpha)`` proportions (at least ``min_size``), labels IID."""
    _check_clients(clients, n)
    if not isinstance(alpha, int | float) or not alpha > 0:
        raise ConfigurationError(f"alpha must be > 0, got {alpha!r}")
    if clients * min_size > n:
        raise ConfigurationError(f"{clients} clients x {min_size} examples exceed {n}")
    spare = n - clients * min_size
    sizes = np.full(clients, min_size) + np.floor(
        rng.dirichlet(np.full(clients, float(alpha))) * spare
    ).astype(int)
    sizes[: n - sizes.sum()] += 1  # hand out what flooring left
    order = rng.permutation(n)
    cuts = np.cumsum(sizes)[:-1]
    return [np.sort(part) for part in np.split(order, cuts)]


def natural(ids: Sequence[object]) -> tuple[list[str], list[Indices]]:
    """One client per distinct id, in order of first appearance."""
    names: dict[str, list[int]] = {}
    for i, key in enumerate(ids):
        names.setdefault(str(key), []).append(i)
    return list(names), [np.array(v, dtype=np.int64) for v in names.values()]


@dataclasses.dataclass(frozen=True)
class FederatedData:
    """Pooled training tensors, one index array per client, and a held-out test set."""

    name: str
    x: torch.Tensor
    y: torch.Tensor
    partition: tuple[Indices, ...]
    client_ids: tuple[str, ...]
    test: ClientData
    classes: int
    """Distinct labels (2 for a binary task)."""

    def __post_init__(self) -> None:
        if len(self.partition) != len(self.client_ids):
            raise ConfigurationError("one index array per client is needed")
        if len(set(self.client_ids)) != len(self.client_ids):
            raise ConfigurationError("client ids must be unique")

    def client(self, i: int) -> ClientData:
        idx = torch.from_numpy(self.partition[i])
        return ClientData(self.x[idx], self.y[idx])

    def cohort(self, clients: Sequence[int]) -> Cohort:
        """The clients at positions ``clients``, padded and stacked in one gather; or, when
        they hold adjacent equal-sized ranges of the pooled tensors, a view without a copy."""
        view = self._contiguous_view(clients)
        if view is not None:
            return view
        parts = [self.partition[i] for i in clients]
        sizes = torch.tensor([p.size for p in parts])
        n_max = int(sizes.max()) if parts else 0
        index = np.zeros((len(parts), n_max), dtype=np.int64)
        for row, p in enumerate(parts):
            index[row, : p.size] = p
        idx = torch.from_numpy(index)
        return Cohort(self.x[idx], self.y[idx], sizes)

    def _contiguous_view(self, clients: Sequence[int]) -> Cohort | None:
        ranges = self._ranges()
        if not clients or ranges is None:
            return None
        first, size = ranges[clients[0]]
        for k, i in enumerate(clients):
            start, n = ranges[i]
            if n != size or start != first + k * size:
                return None
        end = first + len(clients) * size
        shape = (len(clients), size)
        return Cohort(
            self.x[first:end].reshape(*shape, *self.x.shape[1:]),
            self.y[first:end].reshape(shape),
            torch.full((len(clients),), size),
        )

    def _ranges(self) -> list[tuple[int, int]] | None:
        """(start, size) of each client if every client is a contiguous range, else None."""
        cached = self.__dict__.get("_range_cache", False)
        if cached is not False:
            return cached  # type: ignore[no-any-return]
        ranges: list[tuple[int, int]] | None = []
        for p in self.partition:
            if p.size == 0 or p[-1] - p[0] + 1 != p.size or np.any(np.diff(p) != 1):
                ranges = None
                break
            ranges.append((int(p[0]), int(p.size)))  # type: ignore[union-attr]
        object.__setattr__(self, "_range_cache", ranges)
        return ranges

    def pooled(self) -> ClientData:
        """Every client's examples together (for the central baseline)."""
        idx = torch.from_numpy(np.concatenate(self.partition))
        return ClientData(self.x[idx], self.y[idx])

    def sizes(self) -> list[int]:
        return [int(p.size) for p in self.partition]

    def label_counts(self) -> npt.NDArray[np.int64]:
        """``(clients, classes)`` table of how many examples of each label a client holds."""
        y = self.y.long().numpy()
        return np.stack([np.bincount(y[p], minlength=self.classes) for p in self.partition])


def _split_test(n: int, test_fraction: float, rng: np.random.Generator) -> tuple[Indices, Indices]:
    if not 0 < test_fraction < 1:
        raise ConfigurationError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    order = rng.permutation(n)
    cut = round(n * (1 - test_fraction))
    return np.sort(order[:cut]), np.sort(order[cut:])


def _standardise(
    train: npt.NDArray[np.float64], test: npt.NDArray[np.float64]
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    mean = train.mean(axis=0)
    std = train.std(axis=0)
    std[std == 0] = 1.0
    return (train - mean) / std, (test - mean) / std


def _sklearn() -> object:
    try:
        import sklearn.datasets as datasets
    except ImportError:
        raise MissingDependencyError("scikit-learn", "federated") from None
    return datasets


def _tabular(
    name: str,
    loader: str,
    *,
    clients: int,
    alpha: float | None,
    seed: int,
    test_fraction: float,
    names: Sequence[str] | None,
    min_size: int,
) -> FederatedData:
    bunch = getattr(_sklearn(), loader)()
    x = np.asarray(bunch.data, dtype=np.float64)
    y = np.asarray(bunch.target, dtype=np.int64)
    rng = np.random.default_rng(seed)
    train, test = _split_test(y.size, test_fraction, rng)
    xtr, xte = _standardise(x[train], x[test])
    if alpha is None:
        parts = iid(train.size, clients, rng=rng)
    else:
        # at least min_size each, or what many small clients can have (a third of a fair share)
        least = max(1, min(min_size, train.size // (3 * clients)))
        parts = dirichlet(y[train], clients, alpha=alpha, rng=rng, min_size=least)
    ids = tuple(names) if names is not None else tuple(f"client-{i}" for i in range(clients))
    if len(ids) != clients:
        raise ConfigurationError(f"{len(ids)} names for {clients} clients")
    classes = int(y.max()) + 1
    return FederatedData(
        name,
        torch.tensor(xtr, dtype=torch.float32),
        torch.tensor(y[train]),
        tuple(parts),
        ids,
        ClientData(torch.tensor(xte, dtype=torch.float32), torch.tensor(y[test])),
        classes,
    )


def breast_cancer(
    *,
    clients: int = 3,
    alpha: float | None = 0.5,
    seed: int = 0,
    test_fraction: float = 0.25,
    names: Sequence[str] | None = None,
) -> FederatedData:
    """Wisconsin breast cancer (569 patients, 30 features, malignant or benign), standardised on
    the training part and split among ``clients`` hospitals (Dirichlet label skew unless
    ``alpha=None``)."""
    return _tabular(
        "breast-cancer",
        "load_breast_cancer",
        clients=clients,
        alpha=alpha,
        seed=seed,
        test_fraction=test_fraction,
        names=names,
        min_size=20,
    )


def digits(
    *,
    clients: int = 10,
    alpha: float | None = 0.5,
    seed: int = 0,
    test_fraction: float = 0.25,
    names: Sequence[str] | None = None,
) -> FederatedData:
    """Handwritten digits (1,797 8x8 images, 10 classes), split among ``clients``."""
    return _tabular(
        "digits",
        "load_digits",
        clients=clients,
        alpha=alpha,
        seed=seed,
        test_fraction=test_fraction,
        names=names,
        min_size=10,
    )


def _idx_file(path: Path) -> npt.NDArray[np.uint8]:
    with gzip.open(path, "rb") as fh:
        raw = fh.read()
    dims = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims))
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def fashion_mnist(
    *,
    clients: int = 10,
    alpha: float | None = 0.5,
    seed: int = 0,
    limit: int | None = None,
    directory: Path = FASHION_MNIST_DIR,
) -> FederatedData:
    """Fashion-MNIST (60,000 + 10,000 28x28 images) from Debian's ``dataset-fashion-mnist``.

    ``limit`` keeps the first ``limit`` training images (for quick runs).
    """
    files = {
        "xtr": "train-images-idx3-ubyte.gz",
        "ytr": "train-labels-idx1-ubyte.gz",
        "xte": "t10k-images-idx3-ubyte.gz",
        "yte": "t10k-labels-idx1-ubyte.gz",
    }
    missing = [f for f in files.values() if not (directory / f).exists()]
    if missing:
        raise DataError(
            f"Fashion-MNIST is not installed under {directory} (missing {missing[0]}); "
            "install it with `apt-get install dataset-fashion-mnist`"
        )
    arrays = {k: _idx_file(directory / f) for k, f in files.items()}
    xtr = arrays["xtr"].astype(np.float32) / 255.0
    ytr = arrays["ytr"].astype(np.int64)
    if limit is not None:
        xtr, ytr = xtr[:limit], ytr[:limit]
    rng = np.random.default_rng(seed)
    if alpha is None:
        parts = iid(ytr.size, clients, rng=rng)
    else:
        parts = dirichlet(ytr, clients, alpha=alpha, rng=rng)
    return FederatedData(
        "fashion-mnist",
        torch.from_numpy(xtr.reshape(-1, 784)),
        torch.from_numpy(ytr),
        tuple(parts),
        tuple(f"client-{i}" for i in range(clients)),
        ClientData(
            torch.from_numpy(arrays["xte"].astype(np.float32).reshape(-1, 784) / 255.0),
            torch.from_numpy(arrays["yte"].astype(np.int64)),
        ),
        10,
    )


_SPEAKER = re.compile(r"^([A-Z][A-Za-z' ]+):$")


def shakespeare_roles(text: str) -> dict[str, str]:
    """The lines of each speaking role, joined (a role is a ``NAME:`` line then its speech)."""
    roles: dict[str, list[str]] = {}
    speaker: str | None = None
    for line in text.splitlines():
        match = _SPEAKER.match(line.strip())
        if match:
            speaker = match.group(1).strip()
            continue
        if speaker is not None and line.strip():
            roles.setdefault(speaker, []).append(line.strip())
    return {k: " ".join(v) for k, v in roles.items()}


def shakespeare(
    *,
    clients: int = 8,
    length: int = 40,
    max_examples_per_role: int = 2000,
    test_fraction: float = 0.2,
    text: str | None = None,
) -> FederatedData:
    """Next-character prediction, one client per speaking role (the ``clients`` roles with the
    most text), as in LEAF. An example is ``length`` characters and the character after them;
    each role's last ``test_fraction`` of text is held out. Characters outside the roles'
    alphabet map to index 0.
    """
    if text is None:
        from veil.datasets import data_path

        text = Path(data_path("tinyshakespeare.txt")).read_text(encoding="utf-8")
    roles = shakespeare_roles(text)
    if len(roles) < clients:
        raise ConfigurationError(f"the text has {len(roles)} speaking roles, fewer than {clients}")
    chosen = sorted(roles, key=lambda r: (-len(roles[r]), r))[:clients]
    alphabet = sorted(set("".join(roles[r] for r in chosen)))
    lookup = {ch: i + 1 for i, ch in enumerate(alphabet)}
    xs, ys, tx, ty, parts = [], [], [], [], []
    offset = 0
    for role in chosen:
        codes = np.array([lookup.get(ch, 0) for ch in roles[role]], dtype=np.int64)
        cut = int(codes.size * (1 - test_fraction))
        train_x, train_y = _windows(codes[:cut], length, max_examples_per_role)
        test_x, test_y = _windows(codes[cut:], length, max(1, max_examples_per_role // 4))
        if train_x.shape[0] == 0:
            raise DataError(f"role {role!r} has too little text for windows of {length}")
        xs.append(train_x)
        ys.append(train_y)
        tx.append(test_x)
        ty.append(test_y)
        parts.append(np.arange(offset, offset + train_x.shape[0], dtype=np.int64))
        offset += train_x.shape[0]
    return FederatedData(
        "shakespeare",
        torch.from_numpy(np.concatenate(xs)),
        torch.from_numpy(np.concatenate(ys)),
        tuple(parts),
        tuple(chosen),
        ClientData(torch.from_numpy(np.concatenate(tx)), torch.from_numpy(np.concatenate(ty))),
        len(alphabet) + 1,
    )


def _windows(
    codes: npt.NDArray[np.int64], length: int, limit: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    count = codes.size - length
    if count <= 0:
        return np.zeros((0, length), dtype=np.int64), np.zeros(0, dtype=np.int64)
    starts = np.linspace(0, count - 1, num=min(count, limit)).astype(np.int64)
    offsets = np.arange(length)
    return codes[starts[:, None] + offsets[None, :]], codes[starts + length]
