"""Local training: many clients at once with ``torch.func``, DP-SGD, and the central baseline.

A model's parameters travel as one flat float vector (:class:`ParamLayout` maps it to the
module's named tensors). Clients that share an architecture train *together*: their parameter
vectors are stacked and one ``vmap(grad(loss))`` over ``functional_call`` computes every
client's gradient in one batched call. Each client still does exactly what it would do alone:
its data is shuffled on its own, cut into minibatches of ``batch_size`` (the last one smaller),
and a client with fewer batches than the others simply stops moving (its steps are masked). So
the result equals training the clients one after another, which a test checks. A model that
is one linear layer (``nn.Linear``, or :class:`~veil.federated.models.LogisticRegression`)
skips ``vmap``: its gradient has a closed form, two batched matrix products over the cohort
(:func:`_linear_value_and_grad`), equal to the generic path up to rounding.

DP-SGD (:func:`train_dpsgd`) runs per client, with per-sample gradients from
``vmap(grad(loss))`` over the records of a Poisson sample.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from veil.errors import ConfigurationError, DataError
from veil.federated.dp import DpSgd, NoisySum, clip_rows
from veil.federated.messages import TrainConfig
from veil.federated.models import LogisticRegression
from veil.privacy.random import InsecureSeededRandom, RandomSource, SecureRandom

__all__ = [
    "ClientData",
    "Cohort",
    "LocalOutcome",
    "ParamLayout",
    "clipped_gradient_sum",
    "clipped_gradient_sum_vmap",
    "evaluate",
    "per_sample_gradients",
    "poisson_sample",
    "train_central",
    "train_clients",
    "train_dpsgd",
]

Vector = npt.NDArray[np.float64]


class ParamLayout:
    """The names, shapes and offsets of a module's parameters in the flat vector."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.names = tuple(name for name, _ in module.named_parameters())
        self.shapes = tuple(tuple(p.shape) for _, p in module.named_parameters())
        self.sizes = tuple(math.prod(s) for s in self.shapes)
        self.size = int(sum(self.sizes))
        if self.size == 0:
            raise ConfigurationError("the model has no parameters")

    def vector(self) -> Vector:
        """The module's current parameters as one float64 vector."""
        return np.concatenate(
            [p.detach().reshape(-1).double().numpy() for p in self.module.parameters()]
        )

    def unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """Views of ``flat`` (``(..., size)``) shaped as the named parameters."""
        lead = flat.shape[:-1]
        out = {}
        offset = 0
        for name, shape, size in zip(self.names, self.shapes, self.sizes, strict=True):
            out[name] = flat[..., offset : offset + size].reshape(*lead, *shape)
            offset += size
        return out

    def flatten(self, tensors: dict[str, torch.Tensor], lead: int = 0) -> torch.Tensor:
        """Concatenate per-name tensors with ``lead`` leading batch dimensions."""
        parts = [tensors[n].reshape(*tensors[n].shape[:lead], -1) for n in self.names]
        return torch.cat(parts, dim=-1)


@dataclasses.dataclass(frozen=True)
class ClientData:
    """One client's examples: features ``x`` (first axis: examples) and labels ``y``."""

    x: torch.Tensor
    y: torch.Tensor

    def __post_init__(self) -> None:
        if self.x.shape[0] != self.y.shape[0]:
            raise DataError(f"{self.x.shape[0]} examples but {self.y.shape[0]} labels")

    def __len__(self) -> int:
        return int(self.x.shape[0])


@dataclasses.dataclass(frozen=True)
class Cohort:
    """Clients trained together: examples padded to the largest client, ``(K, n_max, ...)``,
    labels ``(K, n_max)``, and each client's true size ``(K,)``."""

    x: torch.Tensor
    y: torch.Tensor
    sizes: torch.Tensor

    @property
    def size(self) -> int:
        return int(self.sizes.shape[0])

    @classmethod
    def stack(cls, clients: Sequence[ClientData]) -> Cohort:
        if not clients:
            return cls(torch.zeros(0, 0), torch.zeros(0, 0), torch.zeros(0, dtype=torch.long))
        sizes = torch.tensor([len(c) for c in clients])
        n_max = int(sizes.max())
        x = torch.zeros((len(clients), n_max, *clients[0].x.shape[1:]), dtype=clients[0].x.dtype)
        y = torch.zeros((len(clients), n_max), dtype=clients[0].y.dtype)
        for i, c in enumerate(clients):
            x[i, : len(c)] = c.x
            y[i, : len(c)] = c.y
        return cls(x, y, sizes)


@dataclasses.dataclass(frozen=True)
class LocalOutcome:
    """What local training produced for one client."""

    update: Vector
    num_examples: int
    metrics: dict[str, float]


def _per_example_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Logistic loss for one output column, cross-entropy for several; written with
    log-sum-exp so that it is stable and has fast batching rules under ``vmap``."""
    if logits.shape[-1] == 1:
        z = logits[..., 0]
        # log(1 + e^z) - y z; softplus is stable (it returns z itself above z = 20)
        return nn.functional.softplus(z) - y.to(z.dtype) * z
    log_p = torch.log_softmax(logits, dim=-1)
    return -log_p.gather(-1, y.long()[..., None])[..., 0]


def _loss_fn(layout: ParamLayout, mu: float, masked: bool) -> Any:
    """The local loss of one client as a function of its named parameters, its batch, the
    batch's mask (which positions are real examples; ignored when ``masked`` is False) and the
    global model's named parameters (FedProx's anchor)."""
    module = layout.module

    def loss(
        params: dict[str, torch.Tensor],
        x: torch.Tensor,
        y: torch.Tensor,
        mask: torch.Tensor,
        anchor: dict[str, torch.Tensor],
    ) -> torch.Tensor:
        logits = functional_call(module, params, (x,))
        per = _per_example_loss(logits, y)
        value = (per * mask).sum() / mask.sum().clamp(min=1.0) if masked else per.mean()
        if mu:
            prox = sum(((params[n] - anchor[n]) ** 2).sum() for n in layout.names)
            value = value + 0.5 * mu * prox
        return value

    return loss


GradientStep = Callable[
    [
        dict[str, torch.Tensor],
        torch.Tensor,
        torch.Tensor,
        torch.Tensor,
        dict[str, torch.Tensor],
    ],
    tuple[dict[str, torch.Tensor], torch.Tensor],
]


def _single_linear(layout: ParamLayout, x: torch.Tensor) -> tuple[str, str | None] | None:
    """The names of the weight and bias (or None) when the model is one linear layer applied
    to each example's flattened features: an ``nn.Linear`` itself (on ``(K, n, features)``
    cohorts) or veil's :class:`~veil.federated.models.LogisticRegression`. Exact types only: a
    subclass may change ``forward``."""
    module = layout.module
    if not x.is_floating_point():
        return None
    if type(module) is nn.Linear and x.dim() == 3:
        linear, prefix = module, ""
    elif type(module) is LogisticRegression:
        linear, prefix = module.linear, "linear."
    else:
        return None
    bias = prefix + "bias" if linear.bias is not None else None
    expected = (prefix + "weight",) if bias is None else (prefix + "weight", bias)
    if layout.names != expected:
        return None
    return prefix + "weight", bias


def _linear_value_and_grad(weight: str, bias: str | None, mu: float, masked: bool) -> GradientStep:
    """The loss of :func:`_loss_fn` and its gradient for every client of a cohort, in closed
    form, for a model that is one linear layer (see :func:`_single_linear`).

    With ``Z = W X_kᵀ + b`` (one column per example of client ``k``'s batch), the per-example
    loss ``ℓ`` (logistic for one output, cross-entropy for several) has ``∂ℓ/∂z = σ(z) - y``,
    or ``softmax(z) - onehot(y)``; with the batch's weights ``ω`` (``mask / Σ mask`` or
    ``1/n``) and ``R = (∂ℓ/∂Z) diag(ω)``, the gradient is ``∇W = R X_k``, ``∇b = R 1``, plus
    ``mu (θ - θ₀)`` for FedProx. Two batched matrix products over the cohort instead of
    ``vmap(grad)``; the same arithmetic up to rounding, which a test checks against the
    generic path.
    """

    def step(
        params: dict[str, torch.Tensor],
        x: torch.Tensor,
        y: torch.Tensor,
        mask: torch.Tensor,
        anchor: dict[str, torch.Tensor],
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        w = params[weight]  # (K, C, D)
        k, nb = x.shape[0], x.shape[1]
        xf = x.reshape(k, nb, -1)
        # (K, C, D) @ (K, D, nb): the examples along the last axis (much faster in torch's
        # batched product than (K, nb, D) @ (K, D, C) when C is small)
        z = torch.matmul(w, xf.mT)
        if bias is not None:
            z = z + params[bias][:, :, None]
        if z.shape[1] == 1:
            z1 = z[:, 0, :]
            target = y.to(z.dtype)
            per = nn.functional.softplus(z1) - target * z1
            # the derivative of softplus as torch computes it (the identity above z = 20)
            dz = (torch.where(z1 > 20.0, 1.0, torch.sigmoid(z1)) - target)[:, None, :]
        else:
            log_p = torch.log_softmax(z, dim=1)
            labels = y.long()[:, None, :]
            per = -log_p.gather(1, labels)[:, 0, :]
            dz = log_p.exp().scatter_add_(1, labels, torch.full_like(log_p[:, :1], -1.0))
        if masked:
            weights = mask / mask.sum(dim=1, keepdim=True).clamp(min=1.0)
            value = (per * weights).sum(dim=1)
            r = dz * weights[:, None, :]
        else:
            value = per.mean(dim=1)
            r = dz / nb
        grads = {weight: torch.bmm(r, xf)}
        if bias is not None:
            grads[bias] = r.sum(dim=2)
        if mu:
            prox = torch.zeros_like(value)
            for name in grads:
                diff = params[name] - anchor[name]
                grads[name] = grads[name] + mu * diff
                prox = prox + diff.reshape(k, -1).square().sum(dim=1)
            value = value + 0.5 * mu * prox
        return grads, value

    return step


def train_clients(
    layout: ParamLayout,
    parameters: npt.ArrayLike,
    clients: Cohort | Sequence[ClientData],
    config: TrainConfig,
    *,
    generator: torch.Generator,
) -> list[LocalOutcome]:
    """Train ``clients`` together from ``parameters`` (see the module docstring).

    Returns each client's update (local model minus ``parameters``), clipped to
    ``config.clip_norm`` if it is set, with its training loss and, under clipping, whether it
    was already within the norm (``within_clip``).
    """
    cohort = clients if isinstance(clients, Cohort) else Cohort.stack(clients)
    k = cohort.size
    if k == 0:
        return []
    x, y, sizes = cohort.x, cohort.y, cohort.sizes
    dtype = x.dtype if x.is_floating_point() else torch.float32
    start = torch.tensor(np.asarray(parameters), dtype=dtype)
    n_max = int(x.shape[1])
    if n_max == 0 or int(sizes.max()) == 0:
        raise DataError("every client in the cohort has no examples")
    positions = torch.arange(n_max)
    valid = positions[None, :] < sizes[:, None]
    batch = config.batch_size or n_max
    steps = math.ceil(n_max / batch)
    # Masks are needed only when some batch holds padding: unequal clients, or a last batch
    # shorter than the others.
    masked = not (bool(valid.all()) and n_max % batch == 0)
    linear = _single_linear(layout, x)
    if linear is not None:
        value_and_grad = _linear_value_and_grad(*linear, config.proximal_mu, masked)
    else:
        loss = _loss_fn(layout, config.proximal_mu, masked)
        value_and_grad = vmap(
            torch.func.grad_and_value(loss), in_dims=(0, 0, 0, 0, None), randomness="different"
        )
    anchor = layout.unflatten(start)
    # gradients with respect to the named tensors, not one flat vector (no scatter in backward)
    params = {n: t.expand(k, *t.shape).clone() for n, t in anchor.items()}
    loss_sum = torch.zeros(k, dtype=torch.float64)
    loss_steps = torch.zeros(k, dtype=torch.float64)
    lr = config.learning_rate
    rows = torch.arange(k)[:, None]
    for _ in range(config.local_epochs):
        if batch >= n_max:
            order = positions.expand(k, -1)
        else:
            keys = torch.rand((k, n_max), generator=generator)
            keys = torch.where(valid, keys, 2.0)
            order = torch.argsort(keys, dim=1)
        for s in range(steps):
            if batch >= n_max:  # full batch: no gather
                xb, yb, mask = x, y, valid.to(dtype)
            else:
                idx = order[:, s * batch : (s + 1) * batch]
                xb, yb, mask = x[rows, idx], y[rows, idx], valid[rows, idx].to(dtype)
            grads, values = value_and_grad(params, xb, yb, mask, anchor)
            if masked:
                active = (mask.sum(dim=1) > 0).to(dtype)
                for n, g in grads.items():
                    params[n] = params[n] - lr * active.reshape(k, *[1] * (g.dim() - 1)) * g
                loss_sum += (values.double() * active.double()).detach()
                loss_steps += active.double()
            else:
                for n, g in grads.items():
                    params[n] = params[n] - lr * g
                loss_sum += values.double().detach()
                loss_steps += 1.0
    flat = layout.flatten(params, lead=1)
    updates = (flat.double() - start.double()).numpy()
    updates.flags.writeable = False  # each client's row is handed out as a read-only view
    within: npt.NDArray[np.bool_] | None = None
    if config.clip_norm is not None:
        updates, within = clip_rows(updates, config.clip_norm)
    outcomes = []
    losses = (loss_sum / loss_steps.clamp(min=1.0)).tolist()
    for i, n in enumerate(sizes.tolist()):
        metrics = {"train_loss": losses[i]}
        if within is not None:
            metrics["within_clip"] = float(within[i])
        outcomes.append(LocalOutcome(updates[i], n, metrics))
    return outcomes


def _per_sample_grads(
    layout: ParamLayout, parameters: torch.Tensor, x: torch.Tensor, y: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Each example's gradient, per named parameter: ``{name: (examples, *shape)}``. Taking
    the gradient with respect to the named tensors (not the flat vector they are views of)
    lets autograd skip the scatter into one big buffer: about 4x faster on an MLP."""
    module = layout.module
    params = layout.unflatten(parameters)

    def single(p: dict[str, torch.Tensor], xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        logits = functional_call(module, p, (xi[None],))
        return _per_example_loss(logits, yi[None]).sum()

    grads: dict[str, torch.Tensor] = vmap(
        grad(single), in_dims=(None, 0, 0), randomness="different"
    )(params, x, y)
    return grads


def per_sample_gradients(
    layout: ParamLayout, parameters: torch.Tensor, x: torch.Tensor, y: torch.Tensor
) -> torch.Tensor:
    """The gradient of each example's loss, one row per example: ``(examples, size)``."""
    return layout.flatten(_per_sample_grads(layout, parameters, x, y), lead=1)


# Per-sample gradients are clipped in the model's precision (float32) to this fraction of C: the
# norms are accumulated in float64 from float32 squares (relative error below 1e-7), and each
# scaled float32 gradient is within one rounding (6e-8) of exact, so every clipped gradient has
# an L2 norm below C however the float32 arithmetic rounds. The sums are accumulated in float64.
_CLIP_MARGIN = 1.0 - 2.0**-10
# Ghost clipping sums each layer's squares in float32 while its inputs plus outputs number at
# most this (relative error below 2**-12 on a norm; see _norm_dtype), else in float64.
_FLOAT32_NORM_WIDTH = 4096
# Ghost clipping sums the clipped gradients with float32 matrix products: its clipping norm
# keeps 2**-7 of C more for their rounding, whatever the batch (see _ghost_clipped_sum).
_GHOST_MARGIN = _CLIP_MARGIN - 2.0**-7
# Its products sum pieces of p examples with p·b <= this (b: the examples of the call), in
# float32; above 2,048 examples in one call the product is float64.
_GHOST_PRODUCT = 2**16


def clipped_gradient_sum(
    layout: ParamLayout,
    parameters: torch.Tensor,
    x: torch.Tensor,
    y: torch.Tensor,
    clip_norm: float,
    *,
    out: npt.NDArray[np.float64] | None = None,
) -> npt.NDArray[np.float64]:
    """The sum over examples of each per-sample gradient clipped to L2 norm ``clip_norm``
    (float64, ``(size,)``).

    Models made only of linear layers (logistic regression, MLPs) never build the per-sample
    gradients: their norms come from the layers' inputs and output gradients, and one more
    backward pass of the loss weighted by the clipping factors gives the sum
    (:func:`_ghost_clipped_sum`). Other models take per-sample gradients with ``vmap``.

    ``out``, a contiguous float64 array of the parameters' size, receives the sum and is
    returned (a caller that repeats the call saves a fresh array, and its page faults, each
    time); without it the result is a new array.
    """
    if _all_linear(layout.module):
        return _ghost_clipped_sum(layout, parameters, x, y, clip_norm, out=out)
    return clipped_gradient_sum_vmap(layout, parameters, x, y, clip_norm, out=out)


def _all_linear(module: nn.Module) -> bool:
    """Whether every parameter belongs to an ``nn.Linear`` (weights and biases only)."""
    owned = {id(p) for m in module.modules() if isinstance(m, nn.Linear) for p in m.parameters()}
    return all(id(p) in owned for p in module.parameters())


def _ghost_clipped_sum(
    layout: ParamLayout,
    parameters: torch.Tensor,
    x: torch.Tensor,
    y: torch.Tensor,
    clip_norm: float,
    *,
    out: npt.NDArray[np.float64] | None = None,
) -> npt.NDArray[np.float64]:
    """Clipped gradient sum for models of linear layers, without per-sample gradients.

    For a linear layer applied to one example, with input ``a`` and output gradient ``g``, the
    example's weight gradient is ``g aᵀ``, whose squared norm is ``‖g‖² ‖a‖²``, and its bias
    gradient is ``g``; summing over layers gives each example's squared gradient norm (each
    layer's sums of squares in float32 for layers up to 4,096 inputs plus outputs, see
    :func:`_norm_dtype`, and the rest in float64). One backward pass to the layers' outputs
    gives every ``g``; with ``f_i = min(1, C'/‖∇ℓ_i‖)`` the sum of the clipped per-sample
    gradients is then, per layer, ``Σ_i f_i g_i a_iᵀ = (F G)ᵀ A`` for the weights and
    ``Σ_i f_i g_i`` for the bias: one matrix product of the stored inputs and the scaled
    output gradients, not a second backward pass (Goodfellow 2015; Lee and Kifer 2021).

    The clipping norm is ``C' = C (1 - 2⁻¹⁰ - 2⁻⁷)`` for every batch, so adding one example
    changes no other example's factor. The product sums pieces of ``p`` examples in float32
    (``u = 2⁻²⁴``) and the pieces in float64: its rounding error is at most
    ``γ_p Σ_i ‖f_i ∇ℓ_i‖ ≤ p u b C'``, and twice that (both neighbours' sums) stays within the
    ``2⁻⁷ C`` kept for it when ``p b ≤ 2¹⁶``: one piece up to 256 examples, smaller pieces
    above, and a float64 product above 2,048 examples. So the sum moves by less than ``C``
    between neighbouring batches (for the per-example gradients as computed; the 2⁻¹⁰ covers
    the norms' and the scaling's own rounding, as in :data:`_CLIP_MARGIN`).
    """
    module = layout.module
    params = {n: t.detach().requires_grad_(True) for n, t in layout.unflatten(parameters).items()}
    # each layer's prefix in the parameters' names ("" for a model that is one nn.Linear)
    linears = {
        id(m): f"{name}." if name else ""
        for name, m in module.named_modules()
        if isinstance(m, nn.Linear)
    }
    expected = [
        prefix + part
        for m in module.modules()
        if isinstance(m, nn.Linear)
        for prefix, part in [(linears[id(m)], "weight"), (linears[id(m)], "bias")]
        if getattr(m, part) is not None
    ]
    if sorted(expected) != sorted(layout.names):  # a parameter shared by two layers
        return clipped_gradient_sum_vmap(layout, parameters, x, y, clip_norm, out=out)
    inputs: list[torch.Tensor] = []
    outputs: list[torch.Tensor] = []
    owners: list[str] = []

    def keep(mod: nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        inputs.append(args[0])
        outputs.append(out)
        owners.append(linears[id(mod)])

    handles = [m.register_forward_hook(keep) for m in module.modules() if isinstance(m, nn.Linear)]
    try:
        # no parameter is shared (checked above): skip functional_call's search for ties
        logits = functional_call(module, params, (x,), tie_weights=False)
    finally:
        for h in handles:
            h.remove()
    if set(owners) != set(linears.values()) or len(owners) != len(linears):
        # a layer used twice (its per-sample gradient is a sum of outer products, whose norm
        # has no such shortcut) or never
        return clipped_gradient_sum_vmap(layout, parameters, x, y, clip_norm, out=out)
    if any(a.dim() != 2 for a in inputs):  # a layer applied along a sequence: the same
        return clipped_gradient_sum_vmap(layout, parameters, x, y, clip_norm, out=out)
    losses = _per_example_loss(logits, y)
    grads_out = torch.autograd.grad(losses.sum(), outputs)
    b = x.shape[0]
    squares = torch.zeros(b, dtype=torch.float64)
    biased = [owner + "bias" in params for owner in owners]
    norm_dtype = _norm_dtype(inputs, grads_out)
    for a, g, has_bias in zip(inputs, grads_out, biased, strict=True):
        g_sq = g.square().sum(dim=1, dtype=norm_dtype).double()
        squares += a.detach().square().sum(dim=1, dtype=norm_dtype).double() * g_sq
        if has_bias:
            squares += g_sq
    # a batch-independent clipping norm: the factors of the other examples do not change when
    # one is added, so only its own clipped gradient and the rounding move the sum
    factors = (clip_norm * _GHOST_MARGIN / squares.sqrt().clamp(min=1e-300)).clamp(max=1.0)
    f = factors.to(grads_out[0].dtype)[:, None]
    longest = _GHOST_PRODUCT // max(b, 1)
    if longest < 32 or grads_out[0].dtype != torch.float32:
        product_dtype, pieces = torch.float64, 1  # exact enough at any batch (2⁻⁵³ ≪ 2⁻⁷/b)
    else:
        product_dtype, pieces = torch.float32, -(-b // longest)
    piece = -(-b // pieces) if b else 1  # even pieces, at most ``longest`` each
    result = _output(layout, out)
    sums = layout.unflatten(result)  # float64 views of the result, one per parameter
    for a, g, owner, has_bias in zip(inputs, grads_out, owners, biased, strict=True):
        scaled = (g * f).to(product_dtype)
        a = a.detach().to(product_dtype)
        weight = sums[owner + "weight"]
        weight.copy_(torch.mm(scaled[:piece].T, a[:piece]))
        for lo in range(piece, b, piece):  # further pieces, added in float64
            weight += torch.mm(scaled[lo : lo + piece].T, a[lo : lo + piece])
        if has_bias:
            torch.sum(scaled, dim=0, dtype=torch.float64, out=sums[owner + "bias"])
    return result.numpy()


def _norm_dtype(inputs: Sequence[torch.Tensor], grads_out: Sequence[torch.Tensor]) -> torch.dtype:
    """The precision of ghost clipping's sums of squares: float32 for float32 layers whose
    inputs plus outputs number at most :data:`_FLOAT32_NORM_WIDTH`, else float64.

    A sum of ``n`` float32 squares, each rounded and added in any order, is within a relative
    ``γ_n = n u / (1 - n u)`` of exact (``u = 2⁻²⁴``), so a layer's ``‖a‖² ‖g‖²`` (the product in
    float64) is within ``γ_(n_a + n_g)`` and the example's squared norm within the largest of
    those: at most about ``2⁻¹²`` at 4,096, a norm too small by at most that fraction, well
    inside the ``2⁻¹⁰`` of :data:`_CLIP_MARGIN`. Casting the squares to float64 first cost a
    copy of every layer input per step (about a tenth of an MLP's clipped sum).
    """
    for a, g in zip(inputs, grads_out, strict=True):
        if a.dtype != torch.float32 or g.dtype != torch.float32:
            return torch.float64
        if a.shape[1] + g.shape[1] > _FLOAT32_NORM_WIDTH:
            return torch.float64
    return torch.float32


def clipped_gradient_sum_vmap(
    layout: ParamLayout,
    parameters: torch.Tensor,
    x: torch.Tensor,
    y: torch.Tensor,
    clip_norm: float,
    *,
    out: npt.NDArray[np.float64] | None = None,
) -> npt.NDArray[np.float64]:
    """:func:`clipped_gradient_sum` through per-sample gradients, for any model."""
    grads = _per_sample_grads(layout, parameters, x, y)
    b = x.shape[0]
    flat = [grads[name].reshape(b, -1) for name in layout.names]
    squares = torch.zeros(b, dtype=torch.float64)
    for g in flat:
        squares += g.square().sum(dim=1, dtype=torch.float64)
    factors = (clip_norm * _CLIP_MARGIN / squares.sqrt().clamp(min=1e-300)).clamp(max=1.0)
    f = factors.to(flat[0].dtype)[:, None]
    parts = [(g * f).sum(dim=0, dtype=torch.float64) for g in flat]
    if out is None:
        return torch.cat(parts).numpy()
    return torch.cat(parts, out=_output(layout, out)).numpy()


def _output(layout: ParamLayout, out: npt.NDArray[np.float64] | None) -> torch.Tensor:
    """A float64 tensor of the parameters' size: ``out`` itself (shared memory), or new."""
    if out is None:
        return torch.empty(layout.size, dtype=torch.float64)
    if out.dtype != np.float64 or out.shape != (layout.size,) or not out.flags.c_contiguous:
        raise ConfigurationError(
            f"out must be a contiguous float64 array of shape ({layout.size},), "
            f"got {out.dtype} {out.shape}"
        )
    return torch.from_numpy(out)


def poisson_sample(rng: RandomSource, n: int, q: float) -> npt.NDArray[np.int64]:
    """The indices of the records among ``n`` sampled each with probability ``q``.

    A record is sampled when its uniform draw ``k·2⁻⁵³`` (``k``: 53 random bits, as in
    :func:`~veil.federated.protocol.uniform`) is below ``q``, that is when ``k < T = ⌈q·2⁵³⌉``
    (``q·2⁵³`` is exact in float64). The bits are drawn as they are needed: ``k``'s top 16 bits
    ``h`` for every record (a quarter of the random words), which decide unless ``h`` equals
    ``T``'s top 16 bits; only for those records (a fraction ``2⁻¹⁶``) the other 37 bits ``l``
    decide (``l < T mod 2³⁷``). ``h`` and ``l`` are independent and uniform, so the event and
    its probability are exactly those of the 53-bit draw. ``rng`` is the caller's source:
    :class:`~veil.privacy.SecureRandom` for a real release, so that the sample stays secret.

    Raises:
        ConfigurationError: for ``n`` not a non-negative integer or ``q`` outside [0, 1].
    """
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 0:
        raise ConfigurationError(f"n must be an integer >= 0, got {n!r}")
    if isinstance(q, bool) or not isinstance(q, int | float) or not 0.0 <= q <= 1.0:
        raise ConfigurationError(f"q must be a probability in [0, 1], got {q!r}")
    threshold = math.ceil(q * 2.0**53)
    if threshold >= 2**53:
        return np.arange(n, dtype=np.int64)
    high, low = threshold >> 37, threshold & (2**37 - 1)
    tops = rng.words(-(-n // 4)).view(np.uint16)[:n]
    below = tops < np.uint16(high)
    ties = np.flatnonzero(tops == np.uint16(high))
    if ties.size:
        rest = rng.words(ties.size) >> np.uint64(27)  # 37 fresh bits per tied record
        below[ties[rest < np.uint64(low)]] = True
    return np.flatnonzero(below)


def _usable_cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        return os.cpu_count() or 1


@contextlib.contextmanager
def _core_for_the_noise() -> Iterator[bool]:
    """Whether a second thread can draw the noise on a core of its own (False on one core).
    Within the block torch's intra-op threads are at most the usable cores less one; they are
    restored after."""
    cores = _usable_cores()
    if cores < 2:
        yield False
        return
    threads = torch.get_num_threads()
    if threads < cores:
        yield True
        return
    torch.set_num_threads(cores - 1)
    try:
        yield True
    finally:
        torch.set_num_threads(threads)


def _noise_stream(rng: RandomSource) -> RandomSource | None:
    """A source for the noise drawn on another thread while ``rng`` samples, or None.

    ``SecureRandom`` keeps no state, so both threads may read it. A source that is not secure
    seeds a stream of its own from two of its words (reproducible from its seed). Any other
    secure source may not be safe to share between threads, so its noise stays in turn.
    """
    if type(rng) is SecureRandom:  # exactly: a subclass might keep state
        return rng
    if not rng.is_secure:
        seed = rng.words(2)
        return InsecureSeededRandom(int(seed[0]) << 64 | int(seed[1]))
    return None


def train_dpsgd(
    layout: ParamLayout,
    parameters: npt.ArrayLike,
    client: ClientData,
    config: TrainConfig,
    dpsgd: DpSgd,
    *,
    rng: RandomSource,
    chunk: int = 512,
    add_before_noise: Callable[[int, float], Vector] | None = None,
    observe_noisy_sum: Callable[[int, Vector], None] | None = None,
    draw_noise_ahead: bool = True,
) -> LocalOutcome:
    """DP-SGD on one client's records (Abadi et al. 2016), as in :mod:`veil.federated.dp`.

    Each step samples records with probability ``B/n`` from ``rng`` (secure unless a seeded
    source is passed for a simulation), clips each per-sample gradient to ``C``, adds
    discrete Gaussian noise of ``z·C`` to the sum and divides by ``B``.

    The audit hook (for :mod:`veil.audit.canaries`; leave both ``None`` to train): at step
    ``t`` (from 0), ``add_before_noise(t, q)`` returns a vector of the parameters' size that is
    added to the clipped sum before the noise (an auditor's canary gradients, which the auditor
    samples at the step's sampling probability ``q`` and keeps within ``C`` each), and
    ``observe_noisy_sum(t, s)`` receives the released noisy sum ``s`` (read-only, before the
    division by ``B``). Neither changes the noise, the sampling or the clipping of the records.

    ``draw_noise_ahead`` (the default) draws the noise on a second thread, one step ahead,
    while this thread samples and computes gradients; False draws each step's noise after its
    gradients in this thread. Ahead, the noise comes from a stream of its own: ``rng`` itself
    when it is a :class:`~veil.privacy.SecureRandom` (which keeps no state), a seeded stream
    drawn from ``rng`` when it is not secure (so a seeded run is reproducible, though it trains
    another model than the same seed in turn). Another secure source, or an
    ``add_before_noise`` hook (which may read ``rng``), keeps the noise in turn. The second
    thread needs a core of its own: when torch's intra-op threads already take every core the
    process may use, they are capped at one fewer for the call (and restored after), as two
    pools fighting over the cores make the step slower than drawing in turn; with one core the
    same noise stream is drawn in turn, so a seeded run gives the same model either way.
    """
    n = len(client)
    if n == 0:
        raise DataError("DP-SGD needs at least one record")
    dtype = client.x.dtype if client.x.is_floating_point() else torch.float32
    start = torch.tensor(np.asarray(parameters), dtype=dtype)
    flat = start.clone()
    q = dpsgd.sampling_probability(n)
    steps = dpsgd.steps(n, config.local_epochs)
    noise = NoisySum(
        clip_norm=dpsgd.clip_norm, noise_multiplier=dpsgd.noise_multiplier, dimension=layout.size
    )
    mu = config.proximal_mu
    # Ghost clipping takes the whole sample in one call (its rounding bound is per call, and
    # its memory is that of a forward pass); per-sample gradients go in chunks.
    span = None if _all_linear(layout.module) else chunk
    buffer = np.empty(layout.size)  # the clipped sum of every step, in place
    noisy = torch.empty(layout.size, dtype=dtype)  # the noisy sum in the parameters' dtype
    taken = 0
    # The noise does not depend on the data, so the next step's can be drawn on a second thread
    # while this one samples and computes gradients (the sampler's compiled pass, the cipher and
    # numpy release the GIL), from a stream of its own (or SecureRandom, which keeps no state).
    noise_rng = _noise_stream(rng) if draw_noise_ahead and add_before_noise is None else None
    # Two noise buffers, by turns: one is being released while the next step's is drawn. In
    # float64, so that the noise thread converts the grid steps, not the release.
    drawn_into = [np.empty(layout.size) for _ in range(2)]
    # The noise in turn comes from the same stream as ahead, whichever thread draws it.
    turn_rng = rng if noise_rng is None else noise_rng
    with contextlib.ExitStack() as stack:
        noise_thread = None
        if noise_rng is not None and stack.enter_context(_core_for_the_noise()):
            noise_thread = stack.enter_context(
                ThreadPoolExecutor(max_workers=1, thread_name_prefix="veil-dpsgd-noise")
            )
        drawing = None
        if noise_thread is not None:
            drawing = noise_thread.submit(noise.draw, turn_rng, out=drawn_into[0])
        for t in range(steps):
            chosen = torch.from_numpy(poisson_sample(rng, n, q))
            size = int(chosen.shape[0])
            if span is None or size <= span:
                xb, yb = client.x.index_select(0, chosen), client.y.index_select(0, chosen)
                total = clipped_gradient_sum(layout, flat, xb, yb, dpsgd.clip_norm, out=buffer)
            else:
                total = np.zeros(layout.size)
                for lo in range(0, size, span):
                    sel = chosen[lo : lo + span]
                    total += clipped_gradient_sum(
                        layout, flat, client.x[sel], client.y[sel], dpsgd.clip_norm
                    )
            taken += size
            if add_before_noise is not None:
                extra = np.asarray(add_before_noise(t, q), dtype=np.float64)
                if extra.shape != total.shape:
                    raise ConfigurationError(
                        f"add_before_noise must return {total.shape[0]} values, got {extra.shape}"
                    )
                total += extra
            drawn = None
            if drawing is not None and noise_thread is not None:
                drawn = drawing.result()
                drawing = None
                if t + 1 < steps:
                    following = drawn_into[(t + 1) % 2]
                    drawing = noise_thread.submit(noise.draw, turn_rng, out=following)
            if drawn is None:
                drawn = noise.draw(turn_rng, out=drawn_into[0])
            released = noise.release(total, rng, noise=drawn, out=total)  # in place
            if observe_noisy_sum is not None:
                seen = released.copy()
                seen.flags.writeable = False
                observe_noisy_sum(t, seen)
            # θ ← θ - η (s / B + μ (θ - θ₀)), in place
            prox = flat - start if mu else None
            noisy.copy_(torch.from_numpy(released))  # rounded to the parameters' dtype
            flat.sub_(noisy, alpha=config.learning_rate / dpsgd.batch_size)
            if prox is not None:
                flat.sub_(prox, alpha=config.learning_rate * mu)
    update = (flat.double() - start.double()).numpy()
    metrics = {"dp_steps": float(steps), "mean_batch": taken / steps}
    if config.clip_norm is not None:
        clipped_update, within = clip_rows(update[None, :], config.clip_norm)
        update = clipped_update[0]
        metrics["within_clip"] = float(within[0])
    return LocalOutcome(update, n, metrics)


@torch.no_grad()
def evaluate(
    layout: ParamLayout, parameters: npt.ArrayLike, data: ClientData, *, batch: int = 4096
) -> dict[str, float]:
    """Mean loss and accuracy of the model ``parameters`` on ``data``."""
    dtype = data.x.dtype if data.x.is_floating_point() else torch.float32
    params = layout.unflatten(torch.tensor(np.asarray(parameters), dtype=dtype))
    loss_total = 0.0
    correct = 0
    for lo in range(0, len(data), batch):
        x = data.x[lo : lo + batch]
        y = data.y[lo : lo + batch]
        logits = functional_call(layout.module, params, (x,))
        loss_total += float(_per_example_loss(logits, y).double().sum())
        predicted = (logits[:, 0] > 0).long() if logits.shape[-1] == 1 else logits.argmax(dim=1)
        correct += int((predicted == y.long()).sum())
    n = max(len(data), 1)
    return {"loss": loss_total / n, "accuracy": correct / n}


def train_central(
    layout: ParamLayout,
    parameters: npt.ArrayLike,
    data: ClientData,
    config: TrainConfig,
    *,
    epochs: int,
    generator: torch.Generator,
) -> Vector:
    """The baseline: the same model and optimiser on the pooled data for ``epochs`` epochs."""
    pooled = dataclasses.replace(config, local_epochs=epochs, proximal_mu=0.0, clip_norm=None)
    (outcome,) = train_clients(layout, parameters, [data], pooled, generator=generator)
    return np.asarray(parameters, dtype=np.float64) + outcome.update
