"""The closed-form cohort gradient of one-linear-layer models against the generic
``vmap(grad)`` path: the same updates and losses to float tolerance, whatever the padding,
minibatches, epochs, FedProx term or number of classes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from veil.federated import ClientData, ParamLayout, TrainConfig, models, train_clients
from veil.federated.training import _single_linear


class _GenericLogistic(models.LogisticRegression):
    """The same model under another type: it takes the generic ``vmap(grad)`` path."""


class _GenericLinear(nn.Linear):
    """A plain ``nn.Linear`` under another type (the generic path)."""


def _clients(sizes: list[int], features: int, classes: int, seed: int) -> list[ClientData]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in sizes:
        x = torch.randn((n, features), generator=g, dtype=torch.float64) * 2
        y = torch.randint(0, max(classes, 2), (n,), generator=g)
        out.append(ClientData(x, y))
    return out


def _both(fast: nn.Module, slow: nn.Module, clients: list[ClientData], config: TrainConfig):
    slow.load_state_dict(fast.state_dict())
    fast_layout, slow_layout = ParamLayout(fast), ParamLayout(slow)
    assert _single_linear(fast_layout, clients[0].x[None]) is not None
    assert _single_linear(slow_layout, clients[0].x[None]) is None
    start = fast_layout.vector() + np.linspace(-0.3, 0.3, fast_layout.size)
    a = train_clients(
        fast_layout, start, clients, config, generator=torch.Generator().manual_seed(11)
    )
    b = train_clients(
        slow_layout, start, clients, config, generator=torch.Generator().manual_seed(11)
    )
    return a, b


@pytest.mark.parametrize("classes", [1, 3])
@pytest.mark.parametrize(
    ("sizes", "batch_size", "epochs", "mu"),
    [
        ([40, 40, 40], None, 1, 0.0),  # equal clients, full batch: no mask
        ([40, 40], 8, 2, 0.0),  # equal minibatches: no mask
        ([7, 23, 16, 1], None, 3, 0.0),  # uneven clients: padded, masked
        ([7, 23, 16], 5, 2, 0.1),  # minibatches with a short last one, FedProx
        ([12, 0, 9], 4, 2, 0.5),  # a client without records
    ],
)
def test_closed_form_equals_the_generic_path(classes, sizes, batch_size, epochs, mu) -> None:
    torch.manual_seed(classes)
    features = 6
    config = TrainConfig(
        local_epochs=epochs, learning_rate=0.4, batch_size=batch_size, proximal_mu=mu
    )
    clients = _clients(sizes, features, classes, seed=len(sizes) + epochs)
    fast, slow = _both(
        models.LogisticRegression(features, classes).double(),
        _GenericLogistic(features, classes).double(),
        clients,
        config,
    )
    moved = 0.0
    for f, s in zip(fast, slow, strict=True):
        np.testing.assert_allclose(f.update, s.update, rtol=0, atol=1e-12)
        assert f.metrics["train_loss"] == pytest.approx(s.metrics["train_loss"], abs=1e-12)
        assert f.num_examples == s.num_examples
        moved = max(moved, float(np.abs(f.update).max()))
    assert moved > 1e-2  # the clients did train


@pytest.mark.parametrize("bias", [True, False])
def test_a_bare_linear_layer_takes_the_closed_form_too(bias) -> None:
    torch.manual_seed(4)
    config = TrainConfig(local_epochs=2, learning_rate=0.2, batch_size=6, proximal_mu=0.05)
    clients = _clients([13, 20], 5, 4, seed=3)
    fast, slow = _both(
        nn.Linear(5, 4, bias=bias).double(),
        _GenericLinear(5, 4, bias=bias).double(),
        clients,
        config,
    )
    for f, s in zip(fast, slow, strict=True):
        np.testing.assert_allclose(f.update, s.update, rtol=0, atol=1e-12)
        assert f.metrics["train_loss"] == pytest.approx(s.metrics["train_loss"], abs=1e-12)


def test_large_logits_follow_softplus_as_torch_differentiates_it() -> None:
    """Above z = 20 softplus is the identity: both paths must step alike there."""
    clients = [
        ClientData(torch.full((4, 3), 30.0, dtype=torch.float64), torch.tensor([0, 1, 0, 1]))
    ]
    config = TrainConfig(local_epochs=1, learning_rate=0.01)
    fast, slow = _both(
        models.LogisticRegression(3, 1).double(),
        _GenericLogistic(3, 1).double(),
        clients,
        config,
    )
    np.testing.assert_allclose(fast[0].update, slow[0].update, rtol=0, atol=1e-12)
