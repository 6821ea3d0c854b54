"""The public surface: every exported name exists, and the packages export all they define."""

from __future__ import annotations

import importlib

import pytest

import veil
from veil import errors


@pytest.mark.parametrize(
    "package",
    [
        "veil",
        "veil.privacy",
        "veil.ledger",
        "veil.analytics",
        "veil.federated",
        "veil.secagg",
        "veil.deploy",
        "veil.he",
        "veil.audit",
        "veil.audit.mia",
        "veil.audit.canaries",
        "veil.audit.inversion",
        "veil.audit.reconstruction",
    ],
)
def test_every_exported_name_exists(package: str) -> None:
    module = importlib.import_module(package)
    for name in module.__all__:
        assert hasattr(module, name), f"{package}.__all__ names {name} but it is missing"
    assert len(module.__all__) == len(set(module.__all__))


@pytest.mark.parametrize(
    ("package", "submodules"),
    [
        (
            "veil.privacy",
            [
                "veil.privacy.events",
                "veil.privacy.mechanisms",
                "veil.privacy.random",
                "veil.privacy.calibration",
                "veil.privacy.accountants",
            ],
        ),
        ("veil.ledger", ["veil.ledger.ledger", "veil.ledger.scope"]),
        (
            "veil.analytics",
            [
                "veil.analytics.query",
                "veil.analytics.spec",
                "veil.analytics.sources",
                "veil.analytics.sql",
            ],
        ),
        (
            "veil.federated",
            [
                "veil.federated.messages",
                "veil.federated.protocol",
                "veil.federated.strategies",
                "veil.federated.dp",
                "veil.federated.training",
                "veil.federated.simulation",
                "veil.federated.secure",
            ],
        ),
        (
            "veil.he",
            [
                "veil.he.params",
                "veil.he.backend",
                "veil.he.model",
                "veil.he.sigmoid",
                "veil.he.scoring",
            ],
        ),
        ("veil.audit", ["veil.audit.dp", "veil.audit.stats", "veil.audit.tradeoff"]),
        ("veil.deploy", ["veil.deploy.agent", "veil.deploy.config", "veil.deploy.store"]),
        (
            "veil.secagg",
            [
                "veil.secagg.crypto",
                "veil.secagg.shamir",
                "veil.secagg.quantize",
                "veil.secagg.protocol",
                "veil.secagg.planning",
            ],
        ),
    ],
)
def test_packages_export_everything_their_modules_make_public(
    package: str, submodules: list[str]
) -> None:
    exported = set(importlib.import_module(package).__all__)
    for sub in submodules:
        missing = set(importlib.import_module(sub).__all__) - exported
        missing -= {"pure_epsilon", "zcdp_rho", "DEFAULT_ORDERS", "CostAccountant"}  # internals
        assert not missing, f"{package} does not export {sorted(missing)} from {sub}"


def test_every_error_is_exported_from_the_top_and_derives_from_veil_error() -> None:
    for name in errors.__all__:
        cls = getattr(errors, name)
        assert issubclass(cls, errors.VeilError)
        assert getattr(veil, name) is cls


def test_error_families_are_also_the_builtins_a_caller_would_catch() -> None:
    assert issubclass(errors.ConfigurationError, ValueError)
    assert issubclass(errors.DataError, ValueError)
    assert issubclass(errors.MissingDependencyError, ImportError)
    assert issubclass(errors.UnsupportedEventError, TypeError)
    assert issubclass(errors.ScopeNotFoundError, KeyError)
    assert issubclass(errors.BudgetExceededError, errors.PrivacyError)
    assert issubclass(errors.AuthenticationError, errors.RemoteProtocolError)
    assert issubclass(errors.RemoteProtocolError, errors.ProtocolError)
    hint = errors.MissingDependencyError("psycopg", "postgres")
    assert "pip install 'veil[postgres]'" in str(hint)
