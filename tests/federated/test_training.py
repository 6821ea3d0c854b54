"""Local training: FedAvg against central gradient descent, the vectorised cohort against a
plain per-client loop, and per-sample gradients against a slow per-example loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tests.federated.conftest import synthetic
from torch import nn

from veil.federated import (
    ClientData,
    ParamLayout,
    Simulation,
    TrainConfig,
    models,
    per_sample_gradients,
    train_clients,
)
from veil.federated.training import _GHOST_MARGIN


def _central_gd(layout: ParamLayout, start: np.ndarray, x, y, lr: float, steps: int) -> np.ndarray:
    """Plain full-batch gradient descent with torch autograd on a fresh module."""
    module = layout.module
    with torch.no_grad():
        values = layout.unflatten(torch.tensor(start)).values()
        for p, v in zip(module.parameters(), values, strict=True):
            p.copy_(v)
    opt = torch.optim.SGD(module.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        logits = module(x)[:, 0]
        loss = nn.functional.binary_cross_entropy_with_logits(logits, y.double())
        loss.backward()
        opt.step()
    return layout.vector()


def test_fedavg_with_one_full_batch_step_equals_central_gradient_descent() -> None:
    torch.manual_seed(0)
    data = synthetic([40, 40, 40, 40], features=6)
    model = models.LogisticRegression(6, 1).double()
    layout = ParamLayout(model)
    start = layout.vector()
    sim = Simulation(
        model=model,
        data=data,
        rounds=5,
        config=TrainConfig(local_epochs=1, learning_rate=0.5),
        seed=0,
    )
    federated = sim.run().parameters
    pooled = data.pooled()
    central = _central_gd(
        ParamLayout(models.LogisticRegression(6, 1).double()), start, pooled.x, pooled.y, 0.5, 5
    )
    np.testing.assert_allclose(federated, central, rtol=0, atol=1e-12)
    assert np.abs(federated - start).max() > 1e-2  # it did train


def test_a_cohort_trains_exactly_as_each_client_alone() -> None:
    """Different client sizes, minibatches (the last one smaller), several epochs and FedProx:
    the batched computation must equal a plain autograd loop over the same batches."""
    torch.manual_seed(1)
    data = synthetic([7, 23, 16], features=4)
    model = models.Mlp(4, 3, hidden=(5,)).double()
    layout = ParamLayout(model)
    start = layout.vector()
    config = TrainConfig(local_epochs=2, learning_rate=0.3, batch_size=5, proximal_mu=0.1)
    clients = [data.client(i) for i in range(3)]
    generator = torch.Generator().manual_seed(7)
    replay = torch.Generator().manual_seed(7)
    outcomes = train_clients(layout, start, clients, config, generator=generator)

    sizes = torch.tensor([len(c) for c in clients])
    n_max = int(sizes.max())
    valid = torch.arange(n_max)[None, :] < sizes[:, None]
    orders = []
    for _ in range(config.local_epochs):
        keys = torch.where(valid, torch.rand((3, n_max), generator=replay), 2.0)
        orders.append(torch.argsort(keys, dim=1))
    for i, client in enumerate(clients):
        ref = models.Mlp(4, 3, hidden=(5,)).double()
        with torch.no_grad():
            values = layout.unflatten(torch.tensor(start)).values()
            for p, v in zip(ref.parameters(), values, strict=True):
                p.copy_(v)
        anchor = [p.detach().clone() for p in ref.parameters()]
        opt = torch.optim.SGD(ref.parameters(), lr=config.learning_rate)
        for order in orders:
            mine = order[i][: len(client)]
            for lo in range(0, len(client), config.batch_size):
                idx = mine[lo : lo + config.batch_size]
                opt.zero_grad()
                loss = nn.functional.cross_entropy(ref(client.x[idx]), client.y[idx])
                pairs = zip(ref.parameters(), anchor, strict=True)
                prox = sum(((p - a) ** 2).sum() for p, a in pairs)
                (loss + 0.5 * config.proximal_mu * prox).backward()
                opt.step()
        expected = ParamLayout(ref).vector() - start
        np.testing.assert_allclose(outcomes[i].update, expected, rtol=0, atol=1e-12)
        assert outcomes[i].num_examples == len(client)


def test_clipping_in_local_training_bounds_the_update_and_reports_it() -> None:
    data = synthetic([30, 30])
    model = models.LogisticRegression(5, 1).double()
    layout = ParamLayout(model)
    config = TrainConfig(local_epochs=3, learning_rate=1.0, clip_norm=1e-3)
    out = train_clients(
        layout,
        layout.vector(),
        [data.client(0), data.client(1)],
        config,
        generator=torch.Generator().manual_seed(0),
    )
    for o in out:
        assert np.linalg.norm(o.update) == pytest.approx(1e-3, rel=1e-9)
        assert o.metrics["within_clip"] == 0.0


@pytest.mark.parametrize(
    ("make", "x"),
    [
        (lambda: models.Mlp(12, 4, hidden=(8,)), torch.randn(6, 12)),
        (lambda: models.SmallCnn(8, 4, channels=(3, 4)), torch.randn(6, 64)),
        (lambda: models.CharLSTM(7, embedding=3, hidden=5), torch.randint(0, 7, (6, 9))),
    ],
    ids=["mlp", "cnn", "lstm"],
)
def test_per_sample_gradients_match_a_slow_per_example_loop(make, x) -> None:
    torch.manual_seed(3)
    model = make()
    layout = ParamLayout(model)
    y = torch.randint(0, 4, (x.shape[0],))
    flat = torch.tensor(layout.vector(), dtype=torch.float32)
    fast = per_sample_gradients(layout, flat, x, y)
    for i in range(x.shape[0]):
        model.zero_grad()
        loss = nn.functional.cross_entropy(model(x[i : i + 1]), y[i : i + 1])
        loss.backward()
        slow = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
        torch.testing.assert_close(fast[i], slow, rtol=1e-5, atol=1e-6)
    assert fast.abs().sum() > 0


def test_clients_without_examples_in_a_cohort_do_not_move() -> None:
    data = synthetic([12, 12])
    layout = ParamLayout(models.LogisticRegression(5, 1).double())
    empty = ClientData(data.x[:0], data.y[:0])
    out = train_clients(
        layout,
        layout.vector(),
        [data.client(0), empty],
        TrainConfig(batch_size=4),
        generator=torch.Generator().manual_seed(0),
    )
    assert np.abs(out[0].update).max() > 0
    assert np.all(out[1].update == 0)


def test_clipped_gradient_sum_matches_a_slow_float64_reference() -> None:
    from veil.federated import clipped_gradient_sum

    torch.manual_seed(5)
    model = models.Mlp(12, 4, hidden=(8,))
    layout = ParamLayout(model)
    flat = torch.tensor(layout.vector(), dtype=torch.float32)
    x = torch.randn(9, 12) * 5
    y = torch.randint(0, 4, (9,))
    clip = 0.3
    fast = clipped_gradient_sum(layout, flat, x, y, clip)
    slow = np.zeros(layout.size)
    clipped_any = False
    # ghost clipping clips to C(1 - 2**-10 - 2**-7): the margin that keeps every clipped norm,
    # and the float32 rounding of the sum, within C
    reduced = clip * _GHOST_MARGIN
    for i in range(9):
        g = per_sample_gradients(layout, flat, x[i : i + 1], y[i : i + 1])[0].double().numpy()
        norm = np.linalg.norm(g)
        clipped_any |= norm > clip
        slow += g * min(1.0, reduced / norm)
    assert clipped_any
    np.testing.assert_allclose(fast, slow, rtol=1e-4, atol=1e-6)
    for i in range(9):
        one = clipped_gradient_sum(layout, flat, x[i : i + 1], y[i : i + 1], clip)
        assert np.linalg.norm(one) < clip


class _Shared(nn.Module):
    """One linear layer applied twice: the shortcut does not hold, the vmap path must run."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(6, 6)
        self.head = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.layer(torch.tanh(self.layer(x)))))


@pytest.mark.parametrize(
    "make",
    [
        lambda: models.Mlp(12, 4, hidden=(8, 5)),
        lambda: models.LogisticRegression(12, 1),
        lambda: _Shared(),
    ],
    ids=["mlp", "logistic", "shared-layer"],
)
def test_linear_models_clip_without_per_sample_gradients_and_agree(make) -> None:
    from veil.federated import clipped_gradient_sum, clipped_gradient_sum_vmap

    torch.manual_seed(6)
    model = make()
    layout = ParamLayout(model)
    flat = torch.tensor(layout.vector(), dtype=torch.float32)
    features = 6 if isinstance(model, _Shared) else 12
    x = torch.randn(40, features) * 3
    classes = 1 if isinstance(model, models.LogisticRegression) else 3
    y = torch.randint(0, max(classes, 2), (40,))
    fast = clipped_gradient_sum(layout, flat, x, y, 0.2)
    reference = clipped_gradient_sum_vmap(layout, flat, x, y, 0.2)
    # vmap clips to C(1 - 2**-10), ghost clipping to C(1 - 2**-10 - 2**-7): within 1%
    np.testing.assert_allclose(fast, reference, rtol=1e-2, atol=1e-6)
    assert np.linalg.norm(reference) > 0.2  # clipping happened and the sum is not trivial
