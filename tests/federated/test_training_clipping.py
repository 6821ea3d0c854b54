"""Ghost clipping (per-sample norms from the layers' inputs and output gradients, the clipped
sum as one matrix product per layer) against a slow per-example loop in float64."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from veil.federated import ParamLayout, clipped_gradient_sum, models
from veil.federated.training import _CLIP_MARGIN, _GHOST_MARGIN


def _slow(model: nn.Module, x: torch.Tensor, y: torch.Tensor, clip: float) -> np.ndarray:
    """Each example's gradient by plain autograd in float64, clipped to ``clip``, summed."""
    ref = model.double()
    total = None
    for i in range(x.shape[0]):
        ref.zero_grad(set_to_none=True)
        logits = ref(x[i : i + 1].double())
        if logits.shape[-1] == 1:
            loss = nn.functional.binary_cross_entropy_with_logits(
                logits[:, 0], y[i : i + 1].double()
            )
        else:
            loss = nn.functional.cross_entropy(logits, y[i : i + 1])
        loss.backward()
        g = torch.cat(
            [
                torch.zeros(p.numel()) if p.grad is None else p.grad.reshape(-1)
                for p in ref.parameters()
            ]
        ).numpy()
        g = g * min(1.0, clip / np.linalg.norm(g))
        total = g if total is None else total + g
    assert total is not None
    return total


class _Tied(nn.Module):
    """Two linear layers sharing one weight: the shortcut does not hold."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(6, 6)
        self.b = nn.Linear(6, 6)
        self.b.weight = self.a.weight
        self.head = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.b(torch.relu(self.a(x)))))


class _Unused(nn.Module):
    """A layer that the forward pass never calls: its gradient is zero."""

    def __init__(self) -> None:
        super().__init__()
        self.used = nn.Linear(6, 3)
        self.spare = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.used(x)


GHOST, VMAP = _GHOST_MARGIN, _CLIP_MARGIN  # the fraction of C each path clips to


@pytest.mark.parametrize(
    ("make", "features", "classes", "margin"),
    [
        (lambda: models.Mlp(12, 4, hidden=(16, 8)), 12, 4, GHOST),
        (lambda: models.LogisticRegression(12, 1), 12, 1, GHOST),
        (lambda: models.LogisticRegression(12, 5), 12, 5, GHOST),
        (lambda: nn.Linear(12, 3), 12, 3, GHOST),
        (lambda: nn.Linear(12, 3, bias=False), 12, 3, GHOST),
        (
            lambda: nn.Sequential(nn.Linear(12, 8, bias=False), nn.Tanh(), nn.Linear(8, 3)),
            12,
            3,
            GHOST,
        ),
        (lambda: _Tied(), 6, 3, VMAP),  # per-sample gradients with vmap
        (lambda: _Unused(), 6, 3, VMAP),
    ],
    ids=[
        "mlp",
        "logistic",
        "multinomial",
        "linear",
        "linear-nobias",
        "mixed-bias",
        "tied",
        "unused",
    ],
)
@pytest.mark.parametrize("batch", [1, 37, 256, 300, 2100])  # 300: two pieces; 2100: float64
def test_the_clipped_sum_matches_a_slow_per_example_loop(
    make, features, classes, margin, batch
) -> None:
    torch.manual_seed(batch)
    model = make()
    layout = ParamLayout(model)
    flat = torch.tensor(layout.vector(), dtype=torch.float32)
    x = torch.randn(batch, features) * 3
    y = torch.randint(0, max(classes, 2), (batch,))
    clip = 0.25
    fast = clipped_gradient_sum(layout, flat, x, y, clip)
    # the reference clips to the same fraction of C; the rest is float32 rounding
    slow = _slow(copy.deepcopy(model), x, y, clip * margin)
    np.testing.assert_allclose(fast, slow, rtol=1e-4, atol=1e-5 * clip)
    assert np.linalg.norm(slow) > 0


@pytest.mark.parametrize("batch", [1, 256, 257])
def test_every_clipped_gradient_stays_within_the_norm(batch) -> None:
    """A neighbouring batch (one record more) moves the sum by less than C, however large the
    record's gradient and however the float32 products round."""
    torch.manual_seed(9)
    model = models.Mlp(20, 3, hidden=(32,))
    layout = ParamLayout(model)
    flat = torch.tensor(layout.vector(), dtype=torch.float32)
    x = torch.randn(batch, 20) * 50
    y = torch.randint(0, 3, (batch,))
    clip = 1.0
    with_it = clipped_gradient_sum(layout, flat, x, y, clip)
    without = (
        clipped_gradient_sum(layout, flat, x[1:], y[1:], clip)
        if batch > 1
        else np.zeros(layout.size)
    )
    assert np.linalg.norm(with_it - without) < clip


class _Recording:
    """A seeded source that keeps every batch of words it hands out."""

    def __init__(self, seed: int, first: np.ndarray | None = None) -> None:
        from veil.privacy.random import InsecureSeededRandom

        self.inner = InsecureSeededRandom(seed)
        self.first = first
        self.drawn: list[np.ndarray] = []

    @property
    def is_secure(self) -> bool:
        return False

    def words(self, n: int) -> np.ndarray:
        if self.first is not None and not self.drawn:
            out = self.first[:n].copy()
        else:
            out = self.inner.words(n)
        self.drawn.append(out)
        return out


@pytest.mark.parametrize("q", [2.0**-8, 256 / 60_000, 0.3, 1 - 2.0**-53, 1.0, 0.0])
@pytest.mark.parametrize("n", [1, 7, 50_001])
def test_poisson_sampling_is_the_53_bit_uniform_draw_below_q(q, n) -> None:
    """Each record is sampled exactly when k < ceil(q 2**53), k its 53 bits: the top 16 drawn
    for every record, the other 37 only where the top 16 tie with the threshold's."""
    from veil.federated import poisson_sample

    threshold = int(np.ceil(q * 2.0**53))
    high = threshold >> 37
    first = None
    if high < 2**16:  # make about a third of the records tie with the threshold's top bits
        g = np.random.default_rng(n)
        tops = g.integers(max(high - 1, 0), min(high + 2, 2**16), size=4 * n).astype(np.uint16)
        first = tops.view(np.uint64)
    rng = _Recording(3, first)
    chosen = poisson_sample(rng, n, q)
    expected = np.zeros(n, dtype=bool)
    if threshold >= 2**53:
        expected[:] = True
    else:
        tops = rng.drawn[0].view(np.uint16)[:n].astype(np.int64)
        expected = tops < high
        ties = np.flatnonzero(tops == high)
        if ties.size:
            rest = (rng.drawn[1] >> np.uint64(27)).astype(np.int64)
            k = (high << 37) + rest
            expected[ties] = k < threshold
            assert len(rng.drawn) == 2
    np.testing.assert_array_equal(chosen, np.flatnonzero(expected))


def test_poisson_sampling_has_rate_q() -> None:
    """The mean sample size over many draws, within 5 standard errors (false alarm < 1e-6)."""
    from veil.federated import poisson_sample
    from veil.privacy.random import InsecureSeededRandom

    rng = InsecureSeededRandom(5)
    n, q, draws = 20_000, 0.013, 200
    sizes = [poisson_sample(rng, n, q).size for _ in range(draws)]
    sd = np.sqrt(n * q * (1 - q) / draws)
    assert abs(np.mean(sizes) - n * q) < 5 * sd


@pytest.mark.parametrize(
    ("n", "q"), [(-1, 0.5), (2.5, 0.5), (10, -0.1), (10, 1.5), (10, float("nan")), (10, "0.5")]
)
def test_poisson_sampling_refuses_bad_arguments(n, q) -> None:
    from veil.errors import ConfigurationError
    from veil.federated import poisson_sample
    from veil.privacy.random import InsecureSeededRandom

    with pytest.raises(ConfigurationError, match="must be"):
        poisson_sample(InsecureSeededRandom(1), n, q)


@pytest.mark.parametrize(
    "make", [lambda: models.Mlp(8, 3, hidden=(5,)), lambda: _Tied()], ids=["ghost", "vmap"]
)
def test_the_clipped_sum_can_be_written_into_a_given_array(make) -> None:
    from veil.errors import ConfigurationError

    torch.manual_seed(2)
    model = make()
    layout = ParamLayout(model)
    flat = torch.tensor(layout.vector(), dtype=torch.float32)
    features = 6 if isinstance(model, _Tied) else 8
    x, y = torch.randn(20, features), torch.randint(0, 3, (20,))
    out = np.full(layout.size, np.nan)
    written = clipped_gradient_sum(layout, flat, x, y, 0.5, out=out)
    assert written is out or np.shares_memory(written, out)
    np.testing.assert_array_equal(out, clipped_gradient_sum(layout, flat, x, y, 0.5))
    with pytest.raises(ConfigurationError, match="contiguous float64"):
        clipped_gradient_sum(layout, flat, x, y, 0.5, out=np.zeros(layout.size, np.float32))


def test_ghost_norms_are_float32_only_for_float32_layers_of_bounded_width() -> None:
    """The float32 sums of squares are proven within 2**-12 only up to 4,096 inputs plus
    outputs per layer: wider layers, or float64 ones, keep float64 sums."""
    from veil.federated.training import _FLOAT32_NORM_WIDTH, _norm_dtype

    def layer(inputs: int, outputs: int, dtype: torch.dtype = torch.float32) -> tuple:
        return torch.zeros(2, inputs, dtype=dtype), torch.zeros(2, outputs, dtype=dtype)

    assert _FLOAT32_NORM_WIDTH * 2.0**-24 <= 2.0**-12
    a, g = layer(784, 256)
    assert _norm_dtype([a], [g]) == torch.float32
    a, g = layer(_FLOAT32_NORM_WIDTH - 10, 10)
    assert _norm_dtype([a], [g]) == torch.float32
    wide = layer(_FLOAT32_NORM_WIDTH - 10, 11)
    assert _norm_dtype([a, wide[0]], [g, wide[1]]) == torch.float64
    doubled = layer(8, 3, torch.float64)
    assert _norm_dtype([doubled[0]], [doubled[1]]) == torch.float64


def test_float32_sums_of_squares_stay_within_their_proven_bound() -> None:
    """At the widest float32 layer, with entries spread over twelve orders of magnitude, each
    row's float32 sum of squares is within γ_n of the exact sum (n = 4,096)."""
    from veil.federated.training import _FLOAT32_NORM_WIDTH

    n = _FLOAT32_NORM_WIDTH
    generator = torch.Generator().manual_seed(4)
    values = (
        torch.randn(64, n, generator=generator)
        * 10.0 ** torch.randint(-6, 6, (64, n), generator=generator).float()
    )
    computed = values.square().sum(dim=1).double()
    exact = values.double().square().sum(dim=1)  # float32 values square exactly in float64
    gamma = n * 2.0**-24 / (1 - n * 2.0**-24)
    relative = ((computed - exact) / exact).abs()
    assert float(relative.max()) <= gamma
    assert float(relative.max()) > 0  # float32 did round
