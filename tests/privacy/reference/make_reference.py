"""Recompute ``reference_eps.json``: epsilons of published DP-SGD settings by dp-accounting and
Opacus, against which veil's accountants are tested.

Not run by the test suite (it needs torch and Opacus). To regenerate, in a separate environment:

    python -m venv /tmp/refenv
    /tmp/refenv/bin/pip install torch==2.13.0 opacus==1.6.0 dp-accounting==0.6.0
    /tmp/refenv/bin/python tests/privacy/reference/make_reference.py
"""

from __future__ import annotations

import json
import math
import platform
from pathlib import Path

import dp_accounting as dpa
import opacus
from opacus.accountants import PRVAccountant, RDPAccountant

# (name, sampling probability q, noise multiplier sigma, steps T, delta, source)
SETTINGS = [
    (
        "abadi_mnist_60_epochs",
        256 / 60000,
        1.1,
        14063,
        1e-5,
        "Abadi et al. 2016 MNIST as in Opacus' examples/mnist README: T = ceil(60 * 60000 / 256)",
    ),
    ("q0.01_sigma1_T1000", 0.01, 1.0, 1000, 1e-5, "generic"),
    ("q0.001_sigma0.8_T10000_delta1e-6", 0.001, 0.8, 10000, 1e-6, "small q, many steps"),
    (
        "full_batch_sigma5_T100",
        1.0,
        5.0,
        100,
        1e-5,
        "no sampling: exactly one Gaussian with mu = sqrt(T)/sigma = 2",
    ),
    ("q0.1_sigma1.5_T300", 0.1, 1.5, 300, 1e-5, "large q (fractional-order RDP matters)"),
    ("abadi_section3.1_E100", 0.01, 4.0, 10000, 1e-5, "Abadi et al. 2016 section 3.1"),
    (
        "tf_privacy_tutorial_15_epochs",
        250 / 60000,
        1.3,
        3600,
        1e-5,
        "TensorFlow Privacy tutorial: n=60000, batch 250, 15 epochs",
    ),
]


def main() -> None:
    rows = []
    for name, q, sigma, steps, delta, source in SETTINGS:
        event = dpa.SelfComposedDpEvent(
            dpa.PoissonSampledDpEvent(q, dpa.GaussianDpEvent(sigma))
            if q < 1
            else dpa.GaussianDpEvent(sigma),
            steps,
        )
        pld = dpa.pld.PLDAccountant(value_discretization_interval=1e-4).compose(event)
        rdp = dpa.rdp.RdpAccountant().compose(event)
        opacus_rdp = RDPAccountant()
        opacus_rdp.history = [(sigma, q, steps)]
        opacus_prv = PRVAccountant()
        opacus_prv.history = [(sigma, q, steps)]
        row = {
            "name": name,
            "source": source,
            "sampling_probability": q,
            "noise_multiplier": sigma,
            "steps": steps,
            "delta": delta,
            "dp_accounting_pld": pld.get_epsilon(delta),
            "dp_accounting_rdp": rdp.get_epsilon(delta),
            "opacus_rdp": opacus_rdp.get_epsilon(delta),
            "opacus_prv_upper": opacus_prv.get_epsilon(delta, eps_error=0.01),
        }
        if q == 1.0:
            row["analytic_gaussian"] = dpa.get_epsilon_gaussian(sigma / math.sqrt(steps), delta)
        print(json.dumps(row))
        rows.append(row)
    out = {
        "generated_with": {
            "dp_accounting": "0.6.0",
            "opacus": opacus.__version__,
            "python": platform.python_version(),
        },
        "settings": rows,
    }
    path = Path(__file__).with_name("reference_eps.json")
    path.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
