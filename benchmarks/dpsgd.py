"""DP-SGD step: veil against the non-private step and Opacus.

Run from the repository root; ``--setup`` (needed the first time, harmless later) builds or
updates Opacus's environment before measuring::

    .venv/bin/python benchmarks/dpsgd.py [--setup] [--models mlp,cnn] [--batch 256] [--steps 30]
        [--repeats 3] [--peers opacus] [--threads 1] [--timeout 600]

The question: what does one DP-SGD step cost in veil, against the non-private step on the same
model and batch (the issue's target: at most 2x) and against Opacus?

The workload: n = 60,000 synthetic records of 28x28 grey images (784 float32 features, uniform in
[0, 1), seeded) with labels in 0..9. There is no Fashion-MNIST on this machine, and the time of a
step does not depend on the pixel values. Two models from ``veil.federated.models``, initialised
from the same seed for every method: ``Mlp(784, 10, hidden=(256,))`` (203,530 parameters) and
``SmallCnn(28, 10)`` (20,490 parameters), cross-entropy loss, SGD with learning rate 0.1. DP-SGD
with the expected batch size B = 256 (``--batch``), Poisson sampling at rate q = B/n, noise
multiplier 1.0 and clipping norm 1.0, as in one local epoch of a veil client holding the 60,000
records.

Timed in this process, a warm-up of 2 steps per method and then ``--repeats`` rounds of
``--steps`` steps each, in which the methods alternate (their order rotates from round to round,
so drift on a shared machine hits them alike); each figure is the wall time of a round divided by
its steps, and the table shows the median and the best over the rounds:

* non-private: plain torch autograd on a fixed batch of B records taken in a shuffled order:
  gather, ``zero_grad``, forward, ``cross_entropy``, ``loss.backward()``, ``torch.optim.SGD``'s
  ``step()``;
* veil: one call of ``veil.federated.train_dpsgd(layout, params, client, TrainConfig(
  local_epochs=1, learning_rate=0.1), dpsgd, rng=SecureRandom())`` with the 60,000-record client,
  its wall time divided by its ``metrics["dp_steps"]``. A whole epoch would be ceil(n/B) = 235
  steps, so ``dpsgd`` is a ``DpSgd(noise_multiplier=1.0, clip_norm=1.0, batch_size=B)`` whose
  ``steps()`` answers ``--steps``: the first ``--steps`` steps of that epoch, each one exactly as
  in the full epoch (q = B/n over all n records, secure Poisson sampling, per-sample gradients,
  clipping, discrete Gaussian noise, update). The call's own set-up (the float32 copy of the
  parameters, the noise's grid) is inside the figure, spread over the steps;
* veil with ``draw_noise_ahead=False``: the same call, each step's noise drawn after its
  gradients in the same thread, instead of on a second thread one step ahead while this one
  samples and computes gradients (the default, above). The default uses one more thread than
  ``--threads`` (when ``--threads`` already takes every core, ``train_dpsgd`` runs torch on one
  thread fewer for the call, so that the noise has a core); this one does not;
* veil's step in pieces, a separate run of the same steps that times each piece with the
  functions ``train_dpsgd`` calls, imported from veil: the Poisson sample (``veil.federated.
  poisson_sample``: 16 secure random bits per record, 37 more only where those tie with
  ceil(q 2^53), i.e. exactly a 53-bit uniform draw below q) and the gather of the sampled
  records (``index_select``);
  ``clipped_gradient_sum`` (for the MLP, made of linear layers, per-sample norms from each
  layer's inputs and output gradients, one backward pass to the layers' outputs, and the sum of
  the clipped gradients as one matrix product per layer of the inputs and the scaled output
  gradients; for the CNN,
  per-sample gradients with ``vmap(grad)`` per named parameter, clipped in float32 and summed in
  float64);
  ``NoisySum.draw`` for the model's dimension with ``SecureRandom`` (the exact discrete
  Gaussian: its compiled candidate pass when built; the grid steps converted to float64 into a
  kept buffer, as ``train_dpsgd`` has them); ``NoisySum.release`` with that noise and
  the update of the flat parameter vector in place (the noisy sum scaled by the learning rate
  over B). ``train_dpsgd``
  gives a model of linear layers its whole sample in one call and others chunks of 512 records;
  with B = 256 a sample over 512 has probability below 1e-40, so the pieces take it as one
  chunk. The sum of the pieces is shown beside the whole
  step measured above.

Every process runs ``--threads`` torch threads, 1 by default: on this 2-core machine, shared with
other jobs, two threads per process oversubscribe the cores and a step's time swings by up to 10x
from round to round (seen while writing this: the MLP's non-private step took 8 to 69 ms with two
threads, 5 to 7 ms with one). Use ``--threads 2`` on an idle machine: the non-private step then
has both cores, and so has veil, one for torch and one for the noise. The noise is drawn by one
thread at any count.

Opacus runs in its own virtual environment, ``.bench-envs/opacus`` (``--setup`` creates it with
``pip install -c constraints.txt torch==2.13.0 opacus``: the latest Opacus that installs beside
veil's torch; 1.6.0 when this was written). Each round starts it afresh as ``<env>/bin/python
dpsgd.py --adapter opacus``, with the same number of torch threads as this process; it builds the
same model class (``models.py`` loaded from ``src/`` by path: veil itself is not installed there)
and the same records, wraps them with ``PrivacyEngine().make_private(..., noise_multiplier=1.0,
max_grad_norm=1.0, poisson_sampling=True)`` (hooks mode, flat clipping, its default PRV
accountant, ``secure_mode=False``: float32 Gaussian noise from torch's generator), runs 2 warm-up
steps and then ``--steps`` timed steps, and prints one JSON line. Its DataLoader samples at rate
1/len(loader) = 1/ceil(n/B) (one record in 235 instead of B/n) and fetches the sampled records
one by one. Reported twice: the step itself (``zero_grad``, forward, loss, ``backward`` with the
per-sample hooks, ``optimizer.step()`` with clipping, noise, the accountant's hook and the
update), and the step with the data loader's ``next()`` (Poisson sample, gather, collate)
included, which is what veil's figure includes.

Nothing here is a timed unit test: it prints times next to the non-private step measured in the
same run, and the ratio with its target (veil's step at most 2x the non-private step); veil
against Opacus is printed for context, without a target.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

from _harness import machine, pip_tail, ratio_text, write_raw

ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = ROOT / ".bench-data"
ENV_DIR = ROOT / ".bench-envs"
MODELS_FILE = ROOT / "src" / "veil" / "federated" / "models.py"

SEED = 2026_11_24
RECORDS = 60_000
IMAGE = 28
FEATURES = IMAGE * IMAGE
CLASSES = 10
NOISE_MULTIPLIER = 1.0
CLIP_NORM = 1.0
LR = 0.1
WARM_UP_STEPS = 2
RESULT = "RESULT "  # prefix of the adapter's one result line on stdout

TARGET_NONPRIVATE = 2.0  # veil DP-SGD step / non-private step, at most

MODELS = {
    "mlp": "Mlp(784, 10, hidden=(256,))",
    "cnn": "SmallCnn(28, 10)",
}
PEERS = ("opacus",)


# --------------------------------------------------------------------------------------------
# The workload (torch only: the Opacus adapter uses these same functions)
# --------------------------------------------------------------------------------------------


def generate(records: int = RECORDS) -> tuple[torch.Tensor, torch.Tensor]:
    """Features (n, 784) float32 in [0, 1) and labels (n,) int64 in 0..9, seeded."""
    generator = torch.Generator().manual_seed(SEED)
    x = torch.rand((records, FEATURES), generator=generator)
    y = torch.randint(0, CLASSES, (records,), generator=generator)
    return x, y


def build_model(models: Any, name: str) -> torch.nn.Module:
    """A fresh model from veil's ``models`` module, with the same initial weights every time."""
    torch.manual_seed(SEED)
    if name == "mlp":
        module: torch.nn.Module = models.Mlp(FEATURES, CLASSES, hidden=(256,))
    elif name == "cnn":
        module = models.SmallCnn(IMAGE, CLASSES)
    else:
        raise ValueError(f"unknown model {name!r}")
    return module


def models_by_path() -> Any:
    """``src/veil/federated/models.py`` as a module of its own (it imports only torch)."""
    spec = importlib.util.spec_from_file_location("_veil_bench_models", MODELS_FILE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------------------------------
# The non-private step and veil (this process)
# --------------------------------------------------------------------------------------------


def nonprivate_run(
    models: Any, name: str, x: torch.Tensor, y: torch.Tensor, batch: int, steps: int
) -> dict[str, float]:
    """``steps`` plain SGD steps on batches of ``batch`` records in a shuffled order."""
    model = build_model(models, name)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    n = x.shape[0]
    generator = torch.Generator().manual_seed(SEED)
    start = time.perf_counter()
    order = torch.randperm(n, generator=generator)
    at = 0
    for _ in range(steps):
        if at + batch > n:
            order, at = torch.randperm(n, generator=generator), 0
        idx = order[at : at + batch]
        at += batch
        xb, yb = x[idx], y[idx]
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(xb), yb)
        loss.backward()
        optimizer.step()
    elapsed = time.perf_counter() - start
    if not torch.isfinite(loss):
        raise RuntimeError("the non-private loss is not finite")
    return {"per_step": elapsed / steps, "batch": float(batch)}


def veil_dpsgd(batch: int, steps: int) -> Any:
    """veil's ``DpSgd`` for this workload, its local training cut to the first ``steps`` steps
    of the epoch (only ``steps()`` changes: q stays B/n over all n records)."""
    from veil.federated import DpSgd

    @dataclasses.dataclass(frozen=True)
    class FirstSteps(DpSgd):
        count: int = 1

        def steps(self, records: int, epochs: int) -> int:
            return self.count

    return FirstSteps(
        noise_multiplier=NOISE_MULTIPLIER, clip_norm=CLIP_NORM, batch_size=batch, count=steps
    )


def veil_run(
    models: Any, name: str, client: Any, batch: int, steps: int, *, ahead: bool = True
) -> dict[str, float]:
    """One ``train_dpsgd`` call of ``steps`` steps; its wall time per step. ``ahead``: each
    step's noise drawn on a second thread during the gradients (the default), else in turn."""
    from veil.federated import ParamLayout, TrainConfig, train_dpsgd
    from veil.privacy.random import SecureRandom

    layout = ParamLayout(build_model(models, name))
    params = layout.vector()
    dpsgd = veil_dpsgd(batch, steps)
    config = TrainConfig(local_epochs=1, learning_rate=LR)
    start = time.perf_counter()
    outcome = train_dpsgd(
        layout, params, client, config, dpsgd, rng=SecureRandom(), draw_noise_ahead=ahead
    )
    elapsed = time.perf_counter() - start
    done = int(outcome.metrics["dp_steps"])
    if done != steps:
        raise RuntimeError(f"train_dpsgd took {done} steps, not {steps}")
    if not np.all(np.isfinite(outcome.update)):
        raise RuntimeError("veil's update is not finite")
    return {"per_step": elapsed / done, "batch": outcome.metrics["mean_batch"]}


PIECES = {
    "sample": "Poisson sample (SecureRandom, 16 bits per record) + gather",
    "clip": "per-sample norms, clipping and the sum (`clipped_gradient_sum`, into one buffer)",
    "noise": "`NoisySum.draw` (the exact discrete Gaussian, SecureRandom)",
    "update": "`NoisySum.release` (the sum on the grid, plus the noise) and the update in place",
}


def veil_pieces_run(
    models: Any, name: str, client: Any, batch: int, steps: int
) -> dict[str, float]:
    """The pieces of ``steps`` DP-SGD steps, each timed on its own; seconds per step each."""
    from veil.federated import NoisySum, ParamLayout, clipped_gradient_sum, poisson_sample
    from veil.privacy.random import SecureRandom

    layout = ParamLayout(build_model(models, name))
    dpsgd = veil_dpsgd(batch, steps)
    rng = SecureRandom()
    n = len(client)
    q = dpsgd.sampling_probability(n)
    noise = NoisySum(
        clip_norm=dpsgd.clip_norm, noise_multiplier=dpsgd.noise_multiplier, dimension=layout.size
    )
    flat = torch.tensor(layout.vector(), dtype=client.x.dtype)
    spent = dict.fromkeys(PIECES, 0.0)
    buffer = np.empty(layout.size)  # as in train_dpsgd: the clipped sum written in place
    noisy = torch.empty(layout.size, dtype=flat.dtype)  # and the noisy sum's float32 copy
    drawn_into = np.empty(layout.size)  # and the noise, as grid steps in float64
    taken = 0
    clock = time.perf_counter
    for _ in range(steps):
        t0 = clock()
        chosen = torch.from_numpy(poisson_sample(rng, n, q))
        xb, yb = client.x.index_select(0, chosen), client.y.index_select(0, chosen)
        t2 = clock()
        total = clipped_gradient_sum(layout, flat, xb, yb, dpsgd.clip_norm, out=buffer)
        t3 = clock()
        drawn = noise.draw(rng, out=drawn_into)
        t4 = clock()
        released = noise.release(total, rng, noise=drawn, out=total)  # in place, as there
        noisy.copy_(torch.from_numpy(released))
        flat.sub_(noisy, alpha=LR / dpsgd.batch_size)
        t5 = clock()
        taken += int(chosen.shape[0])
        spent["sample"] += t2 - t0
        spent["clip"] += t3 - t2
        spent["noise"] += t4 - t3
        spent["update"] += t5 - t4
    out = {key: seconds / steps for key, seconds in spent.items()}
    out["per_step"] = sum(spent.values()) / steps
    out["batch"] = taken / steps
    return out


# --------------------------------------------------------------------------------------------
# Opacus: its environment and its adapter
# --------------------------------------------------------------------------------------------


def opacus_python() -> Path:
    return ENV_DIR / "opacus" / "bin" / "python"


def setup_opacus() -> str | None:
    """Create ``.bench-envs/opacus`` and install Opacus beside veil's torch; the problem, or
    None."""
    env = ENV_DIR / "opacus"
    base = shutil.which("python3") or sys.executable
    pip = [str(opacus_python()), "-m", "pip", "--disable-pip-version-check", "install", "--quiet"]
    steps = []
    if not opacus_python().exists():
        steps.append(("creating the venv", [base, "-m", "venv", str(env)]))
    # The constraints hold torch at veil's version: an unpinned torch would pull another build.
    constraints = str(ROOT / "constraints.txt")
    steps.append(("pip install opacus", [*pip, "-c", constraints, "torch==2.13.0", "opacus"]))
    for what, step in steps:
        done = subprocess.run(step, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            return f"{what} failed: " + (
                pip_tail(done.stderr + done.stdout) or f"exit {done.returncode}"
            )
    check = subprocess.run(
        [str(opacus_python()), __file__, "--adapter", "opacus", "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    if check.returncode != 0:
        return f"installed, but the import fails: {pip_tail(check.stderr, 1) or check.returncode}"
    return None


def opacus_check() -> None:
    from opacus import PrivacyEngine

    models_by_path()
    print(
        json.dumps(
            {
                "opacus": metadata.version("opacus"),
                "torch": torch.__version__,
                "api": PrivacyEngine.make_private.__name__,
            }
        )
    )


def opacus_adapter(name: str, batch: int, steps: int, threads: int) -> None:
    """Hidden mode, run with Opacus's python: warm up, time ``steps`` steps, one result line."""
    import warnings

    warnings.simplefilter("ignore")  # Opacus's notes about secure_mode and the accountant
    torch.set_num_threads(threads)
    from opacus import PrivacyEngine
    from torch.utils.data import DataLoader, TensorDataset

    x, y = generate()
    model = build_model(models_by_path(), name)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    loader = DataLoader(TensorDataset(x, y), batch_size=batch)
    engine = PrivacyEngine()
    model, optimizer, loader = engine.make_private(
        module=model,
        optimizer=optimizer,
        data_loader=loader,
        noise_multiplier=NOISE_MULTIPLIER,
        max_grad_norm=CLIP_NORM,
        poisson_sampling=True,
    )
    criterion = torch.nn.CrossEntropyLoss()
    batches = iter(loader)
    load: list[float] = []
    step: list[float] = []
    sizes: list[int] = []
    clock = time.perf_counter
    for i in range(WARM_UP_STEPS + steps):
        t0 = clock()
        try:
            xb, yb = next(batches)
        except StopIteration:  # only if --steps exceeds an epoch
            batches = iter(loader)
            xb, yb = next(batches)
        t1 = clock()
        optimizer.zero_grad()
        loss = criterion(model(xb), yb)
        loss.backward()
        optimizer.step()
        t2 = clock()
        if i >= WARM_UP_STEPS:
            load.append(t1 - t0)
            step.append(t2 - t1)
            sizes.append(len(yb))
    if not torch.isfinite(loss):
        raise RuntimeError("Opacus's loss is not finite")
    print(
        RESULT
        + json.dumps(
            {
                "version": f"opacus {metadata.version('opacus')}, torch {torch.__version__}",
                "threads": torch.get_num_threads(),
                "sample_rate": float(loader.sample_rate),
                "expected_batch": optimizer.expected_batch_size,
                "load": load,
                "step": step,
                "batches": sizes,
            }
        ),
        flush=True,
    )


def run_opacus_once(name: str, batch: int, steps: int, timeout: float) -> dict[str, Any]:
    """One fresh Opacus process: its per-step figures, or the problem."""
    command = [
        str(opacus_python()),
        __file__,
        "--adapter",
        "opacus",
        "--model",
        name,
        "--batch",
        str(batch),
        "--steps",
        str(steps),
        "--threads",
        str(torch.get_num_threads()),
    ]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"problem": f"timeout: no result within {timeout:.0f} s"}
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT)]
    if done.returncode != 0 or not lines:
        tail = pip_tail(done.stderr, 1)
        return {"problem": "failed: " + (tail or f"exit code {done.returncode}")}
    run = json.loads(lines[-1][len(RESULT) :])
    return {
        "per_step": sum(run["step"]) / steps,
        "with_loading": (sum(run["step"]) + sum(run["load"])) / steps,
        "batch": statistics.fmean(run["batches"]),
        "sample_rate": float(run["sample_rate"]),
        "divisor": float(run["expected_batch"]),
        "version": run["version"],
        "threads": run["threads"],
    }


# --------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------


@dataclass
class Measured:
    """One method's figures for one model: seconds per step, one entry per round."""

    per_step: list[float] = field(default_factory=list)
    batch: list[float] = field(default_factory=list)  # mean records per step
    extra: dict[str, list[float]] = field(default_factory=dict)  # pieces, Opacus with loading
    version: str = ""
    problem: str | None = None

    def add(self, run: dict[str, Any]) -> None:
        self.per_step.append(run["per_step"])
        self.batch.append(run["batch"])
        for key, value in run.items():
            if key not in ("per_step", "batch") and isinstance(value, float):
                self.extra.setdefault(key, []).append(value)

    @property
    def median(self) -> float | None:
        return statistics.median(self.per_step) if self.per_step else None

    @property
    def best(self) -> float | None:
        return min(self.per_step) if self.per_step else None

    def extra_median(self, key: str) -> float | None:
        values = self.extra.get(key)
        return statistics.median(values) if values else None


LOCAL = ("nonprivate", "veil", "veil-in-turn", "pieces")


def time_model(
    name: str,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    batch: int,
    steps: int,
    repeats: int,
    peers: list[str],
    timeout: float,
) -> dict[str, Measured]:
    from veil.federated import ClientData, models

    client = ClientData(x, y)
    methods = [*LOCAL, *peers]
    out = {m: Measured() for m in methods}

    def run(method: str, count: int) -> dict[str, Any]:
        if method == "nonprivate":
            return nonprivate_run(models, name, x, y, batch, count)
        if method == "veil":
            return veil_run(models, name, client, batch, count)
        if method == "veil-in-turn":
            return veil_run(models, name, client, batch, count, ahead=False)
        if method == "pieces":
            return veil_pieces_run(models, name, client, batch, count)
        return run_opacus_once(name, batch, count, timeout)

    for round_ in range(repeats + 1):  # round 0: the local methods' warm-up
        shift = round_ % len(methods)
        for method in methods[shift:] + methods[:shift]:
            m = out[method]
            if m.problem is not None or (round_ == 0 and method in PEERS):
                continue  # a peer warms up inside its own process
            try:
                result = run(method, WARM_UP_STEPS if round_ == 0 else steps)
            except Exception as exc:
                m.problem = f"failed: {type(exc).__name__}: {exc}"
                continue
            if "problem" in result:
                m.problem = result["problem"]
                continue
            if round_ > 0:
                m.version = result.get("version", "")
                m.add(result)
        print(f"  {name}: round {round_} of {repeats} done", flush=True)
    return out


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------

LABELS = {
    "nonprivate": "non-private: torch autograd + `torch.optim.SGD`",
    "veil": "veil `train_dpsgd`",
    "veil-in-turn": "veil `train_dpsgd(draw_noise_ahead=False)`",
    "pieces": "veil, sum of the pieces timed one by one",
    "opacus": "Opacus",
}


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    ms = seconds * 1e3
    return f"{ms:,.0f}" if ms >= 100 else f"{ms:.1f}" if ms >= 10 else f"{ms:.2f}"


def parameters(name: str) -> int:
    from veil.federated import models

    return sum(p.numel() for p in build_model(models, name).parameters())


def print_report(
    name: str, batch: int, steps: int, repeats: int, results: dict[str, Measured]
) -> None:
    floor = results["nonprivate"].median
    print(
        f"\n### {MODELS[name]}, {parameters(name):,} parameters; B = {batch}, q = B/n = "
        f"{batch / RECORDS:.5f}, n = {RECORDS:,}; ms per step, {steps} steps per round, median "
        f"of {repeats} rounds after a warm-up\n"
    )
    print("| method | ms/step (median) | ms/step (best) | x non-private | mean batch | notes |")
    print("|---|---|---|---|---|---|")
    for method, m in results.items():
        label = LABELS[method] + (f" ({m.version})" if m.version else "")
        if not m.per_step:
            print(f"| {label} | **{m.problem}** | | | | |")
            continue
        notes = ""
        if method == "nonprivate":
            notes = "fixed batch of B, shuffled order"
        elif method == "veil":
            notes = (
                "whole call / dp_steps; secure Poisson sample, float32 clipping with a "
                "margin, float64 sums, exact noise drawn on a second thread during the gradients"
            )
        elif method == "veil-in-turn":
            notes = "the same, with the noise drawn after the gradients in the same thread"
        elif method == "pieces":
            notes = "separate run; see the breakdown below"
        elif method == "opacus":
            notes = (
                "the step only: zero_grad, forward, backward (hooks), optimizer.step(); "
                f"q = {m.extra['sample_rate'][0]:.5f}, sum / {m.extra['divisor'][0]:.0f}"
            )
        if m.problem:
            notes = f"**{m.problem}** " + notes
        print(
            f"| {label} | {_ms(m.median)} | {_ms(m.best)} | {ratio_text(m.median, floor)} | "
            f"{statistics.fmean(m.batch):.1f} | {notes} |"
        )
        if method == "opacus":
            loading = m.extra_median("with_loading")
            print(
                f"| Opacus, with the data loader's `next()` | {_ms(loading)} | "
                f"{_ms(min(m.extra['with_loading']))} | {ratio_text(loading, floor)} | | "
                "+ Poisson sample, per-record fetch and collate: what veil's figure includes |"
            )

    pieces = results["pieces"]
    whole = results["veil"].median
    if pieces.per_step:
        total = pieces.median
        print(f"\nveil's step in pieces (median of {repeats} rounds):\n")
        print("| piece | ms/step | share of the pieces |")
        print("|---|---|---|")
        for key, label in PIECES.items():
            value = pieces.extra_median(key)
            share = "-" if value is None or not total else f"{100 * value / total:.1f}%"
            print(f"| {label} | {_ms(value)} | {share} |")
        print(f"| **sum of the pieces** | {_ms(total)} | 100% |")
        print(f"| the whole `train_dpsgd` step (own run, above) | {_ms(whole)} | |")

    def verdict(ok: bool) -> str:
        return "PASS" if ok else "FAIL"

    print("\nRatios:\n")
    veil = results["veil"]
    if whole is None or floor is None:
        why = veil.problem or results["nonprivate"].problem
        print(
            f"* veil DP-SGD step / non-private step (target <= {TARGET_NONPRIVATE:g}): n/a, {why}"
        )
    else:
        print(
            f"* veil DP-SGD step / non-private step = {ratio_text(whole, floor)} "
            f"(target <= {TARGET_NONPRIVATE:g}): {verdict(whole / floor <= TARGET_NONPRIVATE)}"
        )
    in_turn = results["veil-in-turn"].median
    if in_turn is not None and floor is not None:
        print(
            f"* veil with the noise drawn in turn, one thread / non-private step = "
            f"{ratio_text(in_turn, floor)} (the same target): "
            f"{verdict(in_turn / floor <= TARGET_NONPRIVATE)}"
        )
    opacus = results.get("opacus")
    if opacus is None:
        return
    if whole is None or opacus.median is None:
        why = opacus.problem or veil.problem
        print(f"* veil / Opacus (context, no target): n/a, {why}")
        return
    print(
        "* veil / Opacus (context, no target) = "
        f"{ratio_text(whole, opacus.median)} against Opacus's "
        f"step, {ratio_text(whole, opacus.extra_median('with_loading'))} against its step with "
        f"data loading; Opacus / non-private = {ratio_text(opacus.median, floor)}"
    )


def save_raw(batch: int, steps: int, all_results: dict[str, dict[str, Measured]]) -> Path:
    out = {
        model: {
            method: {
                "per_step": m.per_step,
                "batch": m.batch,
                "extra": m.extra,
                "version": m.version,
                "problem": m.problem,
            }
            for method, m in results.items()
        }
        for model, results in all_results.items()
    }
    payload = {"batch": batch, "steps": steps, "results": out}
    return write_raw(DATA_DIR, f"dpsgd_b{batch}_s{steps}", payload)


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument(
        "--models", default=",".join(MODELS), help=f"comma-separated, from: {', '.join(MODELS)}"
    )
    parser.add_argument("--batch", type=int, default=256, help="expected batch size B")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per round")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--peers", default=",".join(PEERS), help=f"comma-separated, from: {', '.join(PEERS)}"
    )
    parser.add_argument(
        "--timeout", type=float, default=600.0, help="seconds for one Opacus process"
    )
    parser.add_argument("--setup", action="store_true", help="create Opacus's environment")
    # Hidden mode: the Opacus adapter.
    parser.add_argument("--adapter", choices=PEERS, help=argparse.SUPPRESS)
    parser.add_argument("--check", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", choices=sorted(MODELS), help=argparse.SUPPRESS)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads in every process (1: steady on a shared machine; see the docstring)",
    )
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.steps < 1 or args.batch < 1 or args.threads < 1:
        parser.error("--repeats, --steps, --batch and --threads must be at least 1")
    if args.batch > RECORDS:
        parser.error(f"--batch must be at most {RECORDS:,}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.adapter:
        if args.check:
            opacus_check()
        else:
            opacus_adapter(args.model, args.batch, args.steps, args.threads)
        return 0
    started = time.perf_counter()
    torch.set_num_threads(args.threads)
    names = [m.strip() for m in args.models.split(",") if m.strip()]
    peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    unknown = sorted(set(names) - set(MODELS)) + sorted(set(peers) - set(PEERS))
    if unknown:
        print(f"unknown models or peers {unknown}", file=sys.stderr)
        return 2
    problem: str | None = None
    if args.setup and "opacus" in peers:
        t0 = time.perf_counter()
        problem = setup_opacus()
        status = "ready" if problem is None else f"NOT ready: {problem}"
        print(f"setup opacus: {status} ({time.perf_counter() - t0:.0f} s)", flush=True)
    if "opacus" in peers and problem is None and not opacus_python().exists():
        problem = f"not installed (run with --setup): no {opacus_python()}"
    versions = (
        f"torch {torch.__version__} ({torch.get_num_threads()} threads)",
        f"numpy {np.__version__}",
        f"veil {metadata.version('veil')}",
    )
    print(f"Machine: {machine(*versions)}")
    print(f"Load average at start: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    t0 = time.perf_counter()
    x, y = generate()
    print(f"Data: {RECORDS:,} x {FEATURES} float32 generated in {time.perf_counter() - t0:.1f} s")
    all_results: dict[str, dict[str, Measured]] = {}
    for name in names:
        print(f"\n{MODELS[name]}: timing", flush=True)
        results = time_model(
            name,
            x,
            y,
            batch=args.batch,
            steps=args.steps,
            repeats=args.repeats,
            peers=[] if problem else peers,
            timeout=args.timeout,
        )
        if problem:
            for peer in peers:
                results[peer] = Measured(problem=problem)
        print_report(name, args.batch, args.steps, args.repeats, results)
        all_results[name] = results
    raw = save_raw(args.batch, args.steps, all_results)
    print(f"\nRaw results: {raw.relative_to(ROOT)}")
    print(f"Load average at end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print(f"Total wall time: {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
