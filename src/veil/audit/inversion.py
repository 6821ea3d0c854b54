"""Gradient inversion: what an honest-but-curious server learns from one client's update.

In federated SGD a client sends the gradient of its loss on its own examples. For a batch of
one, that gradient can give the example back:

* **label recovery** (iDLG; Zhao, Mopuri and Bilen 2020): with softmax cross-entropy, the
  gradient of the last layer's bias is ``p − onehot(y)``, negative only at the true class, so
  ``y = argmin`` of it.
* **analytic first layer** (Phong et al. 2017): for a first linear layer ``Wx + b``, the row ``i``
  of ``∂L/∂W`` is ``(∂L/∂b_i) xᵀ``, so ``x = (∂L/∂W)_i / (∂L/∂b)_i`` exactly. Here every row is
  used at once (the least-squares ``x = Σ_i b_i W_i / Σ_i b_i²`` over the bias gradient ``b``).
  The ratio does not change when the whole gradient is scaled, so clipping does not protect.
* **DLG** (Zhu, Liu and Han 2019): find ``x'`` whose gradient matches, minimising
  ``‖∇L(x', y) − g‖²`` with L-BFGS (the model needs twice-differentiable activations).
* **Inverting Gradients** (Geiping, Bauermeister, Dröge and Moeller 2020): minimise
  ``1 − cos(∇L(x', y), g) + λ·TV(x')`` with Adam on the sign of the gradient, keeping ``x'`` in
  the data's box. The cosine ignores the gradient's scale, so again clipping alone does not help.

Success is the PSNR ``10 log₁₀(peak² / MSE)`` of the reconstruction against the true input
(for an update summed over several clients, against the best-matching one), to compare with the
PSNR of the mean image of the data (what a server knows without any update). What protects:
Gaussian noise on the update (DP). Secure aggregation of many clients' updates blurs the
reconstruction into a mixture (for 16 digits, about 17 dB on the median batch, but up to 21 dB
on one of eight), and is no bound: it hides who sent what, not what the sum reveals.

The updates here are simulated in float64 by :func:`client_update` (clipping, Gaussian noise of
``noise_multiplier · clip_norm``, a sum over clients) so that each defence can be switched on
alone; the noise is a simulation's, not a release's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from veil.errors import ConfigurationError, DataError

__all__ = [
    "analytic_first_layer",
    "client_update",
    "dlg",
    "inverting_gradients",
    "psnr",
    "recover_label",
]

Grads = list[torch.Tensor]


def _linears(model: nn.Module) -> list[nn.Linear]:
    layers = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not layers or any(m.bias is None for m in (layers[0], layers[-1])):
        raise ConfigurationError(
            "gradient inversion needs a model whose first and last layers are nn.Linear with bias"
        )
    return layers


def _gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, create_graph: bool) -> Grads:
    loss = nn.functional.cross_entropy(model(x), y, reduction="sum")
    return list(torch.autograd.grad(loss, list(model.parameters()), create_graph=create_graph))


def client_update(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    clip_norm: float | None = None,
    noise_multiplier: float = 0.0,
    generator: torch.Generator | None = None,
) -> Grads:
    """The update the server sees: the sum over the rows of ``x`` (one row per client, or one
    client's batch) of each example's gradient, each clipped to ``clip_norm`` if given, plus
    Gaussian noise of standard deviation ``noise_multiplier · clip_norm`` on every coordinate."""
    if noise_multiplier and clip_norm is None:
        raise ConfigurationError("noise needs a clip_norm (the noise is scaled to it)")
    total = [torch.zeros_like(p) for p in model.parameters()]
    for i in range(x.shape[0]):
        g = _gradient(model, x[i : i + 1], y[i : i + 1], create_graph=False)
        if clip_norm is not None:
            norm = math.sqrt(sum(float(t.square().sum()) for t in g))
            factor = min(1.0, clip_norm / max(norm, 1e-300))
            g = [t * factor for t in g]
        total = [a + b for a, b in zip(total, g, strict=True)]
    if noise_multiplier:
        assert clip_norm is not None
        sd = noise_multiplier * clip_norm
        total = [t + sd * torch.randn(t.shape, dtype=t.dtype, generator=generator) for t in total]
    return [t.detach() for t in total]


def recover_label(model: nn.Module, update: Sequence[torch.Tensor]) -> int:
    """iDLG: the class whose last-layer bias gradient is the most negative."""
    last = _linears(model)[-1]
    index = _param_index(model, last.bias)
    return int(torch.argmin(update[index]).item())


def _param_index(model: nn.Module, param: torch.Tensor | None) -> int:
    for i, p in enumerate(model.parameters()):
        if p is param:
            return i
    raise ConfigurationError("parameter not found in the model")  # pragma: no cover


def analytic_first_layer(model: nn.Module, update: Sequence[torch.Tensor]) -> torch.Tensor:
    """The input recovered from the first linear layer's weight and bias gradients
    (least squares over its rows); shape ``(1, in_features)``."""
    first = _linears(model)[0]
    w = update[_param_index(model, first.weight)]
    b = update[_param_index(model, first.bias)]
    denom = float(b.square().sum())
    if denom == 0:
        raise DataError("the first layer's bias gradient is zero: nothing to invert")
    return ((b[:, None] * w).sum(dim=0) / denom)[None, :].detach()


def _total_variation(x: torch.Tensor, side: int | None) -> torch.Tensor:
    if side is None or side * side != x.shape[-1]:
        return x.new_zeros(())
    img = x.reshape(-1, side, side)
    return (img[:, 1:, :] - img[:, :-1, :]).abs().mean() + (
        img[:, :, 1:] - img[:, :, :-1]
    ).abs().mean()


def inverting_gradients(
    model: nn.Module,
    update: Sequence[torch.Tensor],
    label: int,
    *,
    features: int,
    steps: int = 1000,
    learning_rate: float = 0.1,
    total_variation: float = 1e-4,
    box: tuple[float, float] = (0.0, 1.0),
    image_side: int | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """Geiping et al.'s attack (module docstring): ``(1, features)`` found by ``steps`` steps of
    Adam on the signed gradient of ``1 − cos + λ·TV``, projected into ``box``. ``image_side``
    turns on the total-variation prior for square images."""
    if steps < 1:
        raise ConfigurationError(f"steps must be >= 1, got {steps}")
    target = [t.detach() for t in update]
    target_norm = torch.sqrt(torch.stack([t.square().sum() for t in target]).sum())
    dtype = target[0].dtype
    gen = torch.Generator().manual_seed(seed)
    lo, hi = box
    x = (lo + (hi - lo) * torch.rand((1, features), generator=gen, dtype=dtype)).requires_grad_()
    y = torch.tensor([label])
    opt = torch.optim.Adam([x], lr=learning_rate)
    sched = torch.optim.lr_scheduler.MultiStepLR(
        opt, milestones=[int(steps * f) for f in (0.375, 0.625, 0.875)], gamma=0.1
    )
    for _ in range(steps):
        opt.zero_grad()
        g = _gradient(model, x, y, create_graph=True)
        dot = sum((a * b).sum() for a, b in zip(g, target, strict=True))
        norm = torch.sqrt(torch.stack([a.square().sum() for a in g]).sum())
        loss = 1.0 - dot / (norm * target_norm + 1e-30)
        loss = loss + total_variation * _total_variation(x, image_side)
        (grad_x,) = torch.autograd.grad(loss, [x])
        x.grad = grad_x.sign()
        opt.step()
        sched.step()
        with torch.no_grad():
            x.clamp_(lo, hi)
    return x.detach()


def dlg(
    model: nn.Module,
    update: Sequence[torch.Tensor],
    label: int,
    *,
    features: int,
    steps: int = 100,
    seed: int = 0,
) -> torch.Tensor:
    """Zhu et al.'s DLG with the label known (iDLG): L-BFGS on the squared distance between the
    gradients; ``(1, features)``."""
    target = [t.detach() for t in update]
    dtype = target[0].dtype
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand((1, features), generator=gen, dtype=dtype).requires_grad_()
    y = torch.tensor([label])
    opt = torch.optim.LBFGS(
        [x],
        lr=1.0,
        max_iter=steps,
        history_size=100,
        tolerance_grad=1e-12,
        tolerance_change=1e-15,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        g = _gradient(model, x, y, create_graph=True)
        loss = torch.stack([((a - b) ** 2).sum() for a, b in zip(g, target, strict=True)]).sum()
        (x.grad,) = torch.autograd.grad(loss, [x])
        return loss.detach()

    opt.step(closure)  # type: ignore[no-untyped-call]
    return x.detach()


def psnr(reconstruction: torch.Tensor, truth: torch.Tensor, *, peak: float = 1.0) -> float:
    """``10 log₁₀(peak² / MSE)`` in dB, the reconstruction clipped to ``[0, peak]`` first;
    ``truth`` may hold several candidates (rows): the best match counts."""
    rec = reconstruction.detach().reshape(1, -1).clamp(0.0, peak).double()
    cand = truth.detach().reshape(-1, rec.shape[1]).double()
    mse = ((cand - rec) ** 2).mean(dim=1).min().item()
    return math.inf if mse == 0 else 10.0 * math.log10(peak * peak / mse)
