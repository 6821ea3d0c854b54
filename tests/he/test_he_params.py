"""128-bit parameters: the standard's table, agreement with SEAL's own check on both sides of
each bound, refusal of over-budget chains, and the choice from a circuit's depth."""

from __future__ import annotations

import pytest

from veil.errors import ConfigurationError
from veil.he import (
    MAX_MODULUS_BITS_128,
    CkksParameters,
    TenSealBackend,
    check_security,
    parameters_for_depth,
)


def test_the_table_is_the_homomorphic_encryption_standard() -> None:
    assert MAX_MODULUS_BITS_128 == {
        1024: 27,
        2048: 54,
        4096: 109,
        8192: 218,
        16384: 438,
        32768: 881,
    }


def _chain(total: int) -> tuple[int, ...]:
    """A chain of 60-bit primes (and one smaller) with exactly ``total`` bits."""
    bits = [60] * (total // 60)
    rest = total % 60
    if rest:
        if rest < 20:  # SEAL's primes have at least 20 bits: borrow from the previous one
            bits[-1] -= 20 - rest
            rest = 20
        bits.append(rest)
    assert sum(bits) == total
    return tuple(bits)


@pytest.mark.parametrize("n", [8192, 16384])
def test_the_bound_holds_from_both_sides_and_seal_agrees(n: int) -> None:
    import tenseal.sealapi as s

    budget = MAX_MODULUS_BITS_128[n]
    at = CkksParameters(n, _chain(budget), 40)
    over = CkksParameters(n, _chain(budget + 1), 40)
    check_security(at)
    with pytest.raises(ConfigurationError, match="below 128-bit security"):
        check_security(over)

    def seal_accepts(bits: tuple[int, ...]) -> bool:
        parms = s.EncryptionParameters(s.SCHEME_TYPE.CKKS)
        parms.set_poly_modulus_degree(n)
        parms.set_coeff_modulus(s.CoeffModulus.Create(n, list(bits)))
        return bool(s.SEALContext(parms, True, s.SEC_LEVEL_TYPE.TC128).parameters_set())

    assert seal_accepts(at.coeff_modulus_bits)
    assert not seal_accepts(over.coeff_modulus_bits)


def test_over_budget_parameters_are_refused_before_any_key_is_made() -> None:
    insecure = CkksParameters(8192, (60, 40, 40, 40, 60), 40)  # 240 > 218 bits
    with pytest.raises(ConfigurationError, match=r"at most 218 bits .* has 240"):
        TenSealBackend().keygen(insecure, rotations=(), relinearization=False)
    with pytest.raises(ConfigurationError, match="below 128-bit"):
        CkksParameters.from_dict(insecure.to_dict())


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (CkksParameters(6000, (60, 40, 60), 40), "not supported"),
        (CkksParameters(8192, (60,), 40), "at least q_0"),
        (CkksParameters(8192, (61, 40, 60), 40), "20 to 60 bits"),
        (CkksParameters(8192, (40, 40, 60), 40), "below q_0"),
    ],
)
def test_malformed_parameters_are_refused(params: CkksParameters, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        check_security(params)


@pytest.mark.parametrize(
    ("depth", "n", "bits"),
    [
        (1, 8192, 160),
        (2, 8192, 200),
        (3, 16384, 240),
        (5, 16384, 320),
        (8, 32768, 440),
    ],
)
def test_parameters_follow_the_depth(depth: int, n: int, bits: int) -> None:
    params = parameters_for_depth(depth)
    assert params.poly_modulus_degree == n
    assert params.total_bits == bits
    assert params.depth == depth
    assert params.total_bits <= MAX_MODULUS_BITS_128[n]


def test_slots_can_force_a_larger_ring_and_depth_has_a_ceiling() -> None:
    assert parameters_for_depth(1, min_slots=8192).poly_modulus_degree == 16384
    with pytest.raises(ConfigurationError, match="no ring dimension"):
        parameters_for_depth(30)
    with pytest.raises(ConfigurationError, match="depth >= 1"):
        parameters_for_depth(0)


def test_a_smaller_scale_fits_a_deeper_circuit_in_the_smaller_ring() -> None:
    """Probability mode's chain: q_0 and P hold the scale plus the headroom its values need."""
    compact = parameters_for_depth(5, scale_bits=30, headroom_bits=4)
    assert compact.poly_modulus_degree == 8192
    assert compact.coeff_modulus_bits == (34, 30, 30, 30, 30, 30, 34)
    assert compact.total_bits == 218  # exactly the budget
    # two more bits of headroom do not fit: the next ring is chosen
    assert parameters_for_depth(5, scale_bits=30, headroom_bits=6).poly_modulus_degree == 16384
    with pytest.raises(ConfigurationError, match="scale of 20 to 56 bits"):
        parameters_for_depth(2, scale_bits=12)


def test_sums_without_rescale_hold_results_up_to_their_bound_and_no_further() -> None:
    """Batch logit mode's parameters: one 60-bit residue, inputs at 2^29 and constants at 2^24
    for results below 64; a result of 60 decodes, one of 100 wraps around."""
    import numpy as np

    from veil.he import circuits, parameters_for_sums

    params = parameters_for_sums(bound=64)
    assert params.coeff_modulus_bits == (60, 60) and params.scale_bits == 29
    assert params.depth == 0
    backend = TenSealBackend()
    keys = backend.keygen(params, rotations=(), relinearization=False)
    ev = backend.evaluator(params, keys.public_bundle())
    slots = params.slots

    def score(x: np.ndarray) -> np.ndarray:
        out = circuits.batch_linear(ev, [ev.load(keys.encrypt(x))], [1.0], 0.0)
        return keys.decrypt(ev.dump(out))[: len(x)]

    # the worst case for the modulus is every slot at the bound (the plaintext polynomial is
    # then the constant z * scale): 60 everywhere decodes, 100 everywhere wraps around
    assert np.allclose(score(np.full(slots, 60.0)), 60.0, atol=1e-5)
    assert np.allclose(score(np.full(slots, -60.0)), -60.0, atol=1e-5)
    assert np.all(np.abs(score(np.full(slots, 100.0)) - 100.0) > 1.0)
    x = np.random.default_rng(0).uniform(-60, 60, slots)
    assert np.allclose(score(x), x, atol=1e-5)
    with pytest.raises(ConfigurationError, match="less than 20 bits"):
        parameters_for_sums(bound=2.0**30)
    with pytest.raises(ConfigurationError, match="positive and finite"):
        parameters_for_sums(bound=float("nan"))
