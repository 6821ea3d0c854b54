"""Audits: attacks and DP auditing, each returning evidence with confidence intervals.

* :mod:`veil.audit.dp`: empirical lower bounds on epsilon (Jagielski et al.'s distinguishing
  audit for any mechanism given as a callable; Steinke et al.'s one-run audit from canary
  scores, and its f-DP refinement), set next to the claimed epsilon.
* :mod:`veil.audit.stats`: Clopper-Pearson bounds and ROC curves (AUC, TPR at a low FPR) of
  independent scores.
* :mod:`veil.audit.tradeoff`: the most any attack can achieve against a DP claim or an
  accountant's composed events, and the check that an attack's ROC stays under it.
* :mod:`veil.audit.canaries`: one-run audits of veil's trainers: white-box gradient canaries
  through ``train_dpsgd``'s audit hook and DP-FedAvg's aggregator, and black-box mislabelled
  canaries.
* :mod:`veil.audit.inversion`: gradient inversion of a federated update (label recovery,
  analytic first layer, DLG, Inverting Gradients) measured by PSNR.
* :mod:`veil.audit.reconstruction`: Dinur-Nissim reconstruction from subset sums (LP decoding),
  against exact answers, a mechanism, or veil's release engine spending a whole budget; the
  differencing and averaging attacks.
* :mod:`veil.audit.mia`: membership inference against a trained model (loss threshold, LiRA
  offline and online, RMIA, with shadow models trained by veil), with bootstrap intervals over
  the independent training runs; needs the ``federated`` extra.
"""

from veil.audit.dp import (
    AuditMethod,
    EpsilonAudit,
    OneRunTest,
    distinguishing_audit,
    epsilon_from_rates,
    gaussian_dp_mu,
    one_run_audit,
    one_run_epsilon,
    one_run_fdp_epsilon,
    one_run_p_value,
)
from veil.audit.stats import Roc, RocPoint, clopper_pearson
from veil.audit.tradeoff import accountant_tpr_limit, dp_tpr_limit, limit_violations

__all__ = [
    "AuditMethod",
    "EpsilonAudit",
    "OneRunTest",
    "Roc",
    "RocPoint",
    "accountant_tpr_limit",
    "clopper_pearson",
    "distinguishing_audit",
    "dp_tpr_limit",
    "epsilon_from_rates",
    "gaussian_dp_mu",
    "limit_violations",
    "one_run_audit",
    "one_run_epsilon",
    "one_run_fdp_epsilon",
    "one_run_p_value",
]
