"""Partitioners and the bundled federated data sets."""

from __future__ import annotations

import numpy as np
import pytest

from veil.errors import ConfigurationError
from veil.federated import data


def _covers_everything_once(parts: list[np.ndarray], n: int) -> None:
    joined = np.concatenate(parts)
    assert joined.size == n
    assert np.array_equal(np.sort(joined), np.arange(n))


def test_iid_deals_out_evenly() -> None:
    parts = data.iid(103, 10, rng=np.random.default_rng(0))
    _covers_everything_once(parts, 103)
    assert {p.size for p in parts} == {10, 11}


@pytest.mark.parametrize("alpha", [0.1, 100.0])
def test_dirichlet_skews_labels_as_alpha_says(alpha: float) -> None:
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 10, size=5000)
    parts = data.dirichlet(labels, 10, alpha=alpha, rng=rng)
    _covers_everything_once(parts, 5000)
    shares = np.stack([np.bincount(labels[p], minlength=10) / p.size for p in parts])
    # how far each client's label mix is from the population's (total variation)
    tv = 0.5 * np.abs(shares - np.bincount(labels) / 5000).sum(axis=1).mean()
    if alpha < 1:
        assert tv > 0.4
    else:
        assert tv < 0.1


def test_quantity_skew_keeps_every_example_and_varies_sizes() -> None:
    rng = np.random.default_rng(2)
    parts = data.quantity_skew(1000, 20, alpha=0.3, rng=rng, min_size=5)
    _covers_everything_once(parts, 1000)
    sizes = [p.size for p in parts]
    assert min(sizes) >= 5 and max(sizes) > 3 * np.median(sizes)


def test_natural_partition_by_id() -> None:
    names, parts = data.natural(["a", "b", "a", "c", "b"])
    assert names == ["a", "b", "c"]
    assert [p.tolist() for p in parts] == [[0, 2], [1, 4], [3]]


def test_partitioners_refuse_impossible_requests() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ConfigurationError, match="cannot split"):
        data.iid(3, 5, rng=rng)
    with pytest.raises(ConfigurationError, match="at least 10"):
        data.dirichlet(np.zeros(30), 5, alpha=1.0, rng=rng)
    with pytest.raises(ConfigurationError, match="alpha"):
        data.dirichlet(np.zeros(300), 5, alpha=0.0, rng=rng)


def test_breast_cancer_hospitals() -> None:
    fed = data.breast_cancer(clients=3, alpha=0.5, seed=0, names=["a", "b", "c"])
    assert fed.client_ids == ("a", "b", "c")
    assert sum(fed.sizes()) + len(fed.test) == 569
    assert fed.x.shape[1] == 30 and fed.classes == 2
    assert abs(float(fed.x.mean())) < 0.05  # standardised on the training part
    assert fed.label_counts().sum() == sum(fed.sizes())


def test_shakespeare_splits_by_speaking_role() -> None:
    text = (
        "ROMEO:\nBut soft, what light through yonder window breaks?\n\n"
        "JULIET:\nO Romeo, Romeo, wherefore art thou Romeo?\n\n"
        "ROMEO:\nShall I hear more, or shall I speak at this?\n"
    )
    roles = data.shakespeare_roles(text)
    assert set(roles) == {"ROMEO", "JULIET"}
    assert roles["ROMEO"].startswith("But soft") and "speak at this" in roles["ROMEO"]
    fed = data.shakespeare(clients=2, length=10, text=text, test_fraction=0.2)
    assert fed.client_ids == ("ROMEO", "JULIET")
    x, y = fed.x.numpy(), fed.y.numpy()
    assert x.shape[1] == 10
    # each label is the character that follows its window
    alphabet = sorted(set(roles["ROMEO"] + roles["JULIET"]))
    decode = {i + 1: ch for i, ch in enumerate(alphabet)}
    first = "".join(decode[c] for c in x[0])
    assert roles["ROMEO"].startswith(first + decode[int(y[0])])


def test_bundled_shakespeare_has_enough_roles() -> None:
    fed = data.shakespeare(clients=8, max_examples_per_role=50)
    assert len(fed.client_ids) == 8 and min(fed.sizes()) == 50
    assert fed.classes > 40


def test_fashion_mnist_missing_is_a_clear_error(tmp_path) -> None:
    from veil.errors import DataError

    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        data.fashion_mnist(directory=tmp_path)


def _idx(path, array: np.ndarray) -> None:
    import gzip

    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as fh:
        fh.write(header + array.astype(np.uint8).tobytes())


def test_fashion_mnist_reads_the_debian_idx_files(tmp_path) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(200, 28, 28))
    labels = np.repeat(np.arange(10), 20)
    _idx(tmp_path / "train-images-idx3-ubyte.gz", images)
    _idx(tmp_path / "train-labels-idx1-ubyte.gz", labels)
    _idx(tmp_path / "t10k-images-idx3-ubyte.gz", images[:50])
    _idx(tmp_path / "t10k-labels-idx1-ubyte.gz", labels[:50])
    fed = data.fashion_mnist(clients=4, alpha=None, directory=tmp_path)
    assert fed.x.shape == (200, 784) and fed.classes == 10
    assert float(fed.x.max()) <= 1.0
    np.testing.assert_allclose(fed.x[7].numpy(), images[7].reshape(-1) / 255.0, rtol=1e-6)
    assert fed.y.tolist() == labels.tolist()
    assert len(fed.test) == 50 and sum(fed.sizes()) == 200


def test_the_real_fashion_mnist_from_debian() -> None:
    import os

    if not (data.FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").exists():
        message = "dataset-fashion-mnist is not installed (scripts/ensure-system-deps.sh)"
        if os.environ.get("VEIL_REQUIRE_ALL") == "1":
            pytest.fail(message)
        pytest.skip(message)
    fed = data.fashion_mnist(clients=5, alpha=None, limit=1000)
    assert fed.x.shape == (1000, 784) and len(fed.test) == 10_000
    assert sorted(set(fed.y.tolist())) == list(range(10))
