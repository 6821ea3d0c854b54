"""The active-adversary mode: signed keys, the consistency round, a threshold above 2n/3."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from veil.errors import ConfigurationError, RemoteProtocolError
from veil.secagg.crypto import SigningKey
from veil.secagg.planning import plan_round
from veil.secagg.protocol import (
    ConsistencyProof,
    SecAggClient,
    SecAggServer,
    UnmaskRequest,
    neighbours_complete,
)

DIM = 8


def _federation(n: int, threshold: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    signing = {u: SigningKey() for u in range(1, n + 1)}
    enrolled = {u: k.public for u, k in signing.items()}
    inputs = {
        u: rng.integers(0, 2**32, size=DIM, dtype=np.uint64).astype(np.uint32) for u in signing
    }
    clients = {
        u: SecAggClient(
            u, session=b"A", round=2, vector=inputs[u], signing_key=signing[u], verify_keys=enrolled
        )
        for u in signing
    }
    server = SecAggServer(
        session=b"A",
        round=2,
        threshold=threshold,
        dimension=DIM,
        neighbours=neighbours_complete(range(1, n + 1)),
        active=True,
    )
    return clients, server, inputs


def _up_to_consistency(clients, server, drops=(set(), set(), set())):
    alive = set(clients) - drops[0]
    directory = server.collect_keys([clients[u].advertise() for u in sorted(alive)])
    alive -= drops[1]
    routed = server.collect_shares([clients[u].share_keys(directory) for u in sorted(alive)])
    alive -= drops[2]
    request = server.collect_masked([clients[u].masked_input(routed[u]) for u in sorted(alive)])
    return alive, request


def test_an_active_round_with_dropouts_gives_the_survivors_sum() -> None:
    clients, server, inputs = _federation(7, 5)
    alive, request = _up_to_consistency(clients, server, (set(), {7}, set()))
    checks = [clients[u].consistency(request) for u in sorted(alive)]
    proof = server.collect_consistency(checks)
    out = server.finish([clients[u].unmask(proof) for u in sorted(alive)])
    expected = np.zeros(DIM, dtype=np.uint32)
    for u in alive:
        expected += inputs[u]
    np.testing.assert_array_equal(out, expected)


@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_random_dropouts_in_the_active_mode_sum_or_abort_below_the_threshold(data) -> None:
    n = data.draw(st.integers(4, 7))
    threshold = 2 * n // 3 + 1
    everyone = list(range(1, n + 1))
    drops = [set(data.draw(st.lists(st.sampled_from(everyone), max_size=2))) for _ in range(5)]
    clients, server, inputs = _federation(n, threshold, seed=data.draw(st.integers(0, 50)))
    left = set(everyone)
    remaining = []
    for d in drops:
        left = left - d
        remaining.append(len(left))
    try:
        alive, request = _up_to_consistency(clients, server, drops[:3])
        alive -= drops[3]
        proof = server.collect_consistency([clients[u].consistency(request) for u in sorted(alive)])
        alive -= drops[4]
        out = server.finish([clients[u].unmask(proof) for u in sorted(alive)])
    except RemoteProtocolError as exc:
        aborted = str(exc)
    else:
        aborted = ""
    if aborted:
        assert min(remaining) < threshold, aborted
        return
    assert min(remaining) >= threshold
    expected = np.zeros(DIM, dtype=np.uint32)
    for u in request.survivors:
        expected += inputs[u]
    np.testing.assert_array_equal(out, expected)


def test_keys_the_server_substitutes_are_refused() -> None:
    clients, server, _ = _federation(4, 3)
    adverts = [c.advertise() for c in clients.values()]
    impostor = SecAggClient(9, session=b"A", round=2, vector=np.zeros(DIM, np.uint32)).advertise()
    forged = dataclasses.replace(
        adverts[1], mask_key=impostor.mask_key, share_key=impostor.share_key
    )
    directory = server.collect_keys([adverts[0], forged, *adverts[2:]])
    with pytest.raises(RemoteProtocolError, match="client 2's keys carry a bad signature"):
        clients[1].share_keys(directory)


def test_unsigned_keys_and_keys_replayed_from_another_round_are_refused() -> None:
    clients, server, _ = _federation(4, 3)
    adverts = [c.advertise() for c in clients.values()]
    unsigned = dataclasses.replace(adverts[2], signature=b"")
    directory = server.collect_keys([*adverts[:2], unsigned, adverts[3]])
    with pytest.raises(RemoteProtocolError, match="not signed"):
        clients[1].share_keys(directory)
    # the same signed keys presented in round 3 do not verify: the round is signed too
    later = SecAggServer(
        session=b"A",
        round=3,
        threshold=3,
        dimension=DIM,
        neighbours=neighbours_complete(range(1, 5)),
        active=True,
    )
    fresh = SecAggClient(
        1,
        session=b"A",
        round=3,
        vector=np.zeros(DIM, np.uint32),
        signing_key=clients[1]._signing_key,
        verify_keys=clients[1]._verify_keys,
    )
    fresh.advertise()
    replayed = later.collect_keys(adverts)
    with pytest.raises(RemoteProtocolError, match="bad signature"):
        fresh.share_keys(replayed)


def test_different_survivor_lists_for_different_clients_abort_the_round() -> None:
    clients, server, _ = _federation(7, 5)
    alive, request = _up_to_consistency(clients, server)
    # the server tells client 1 that 7 dropped, and everyone else that 7 survived
    other = UnmaskRequest(request.survivors - {7}, request.dropped | {7})
    checks = [clients[1].consistency(other)]
    checks += [clients[u].consistency(request) for u in sorted(alive - {1})]
    proof = server.collect_consistency(checks)
    with pytest.raises(RemoteProtocolError, match="other survivor lists than it signed"):
        clients[1].unmask(proof)
    # a proof built around client 1's lists carries signatures over other lists
    forged = ConsistencyProof(
        other, {u: sig for u, sig in proof.signatures.items() if u in other.survivors}
    )
    with pytest.raises(RemoteProtocolError, match="did not sign these survivor lists"):
        clients[1].unmask(forged)


def test_too_few_confirmations_and_a_missing_proof_are_refused() -> None:
    clients, server, _ = _federation(7, 5)
    alive, request = _up_to_consistency(clients, server)
    checks = {u: clients[u].consistency(request) for u in sorted(alive)}
    thin = ConsistencyProof(request, {u: checks[u].signature for u in (1, 2, 3)})
    with pytest.raises(RemoteProtocolError, match="only 3 survivors confirmed"):
        clients[4].unmask(thin)
    with pytest.raises(RemoteProtocolError, match="only with a consistency proof"):
        clients[5].unmask(request)


def test_the_active_mode_needs_a_threshold_above_two_thirds() -> None:
    with pytest.raises(ConfigurationError, match="above two thirds"):
        SecAggServer(
            session=b"A",
            round=1,
            threshold=4,
            dimension=DIM,
            neighbours=neighbours_complete(range(1, 7)),
            active=True,
        )
    # and a client refuses a directory whose threshold is too low for the active mode
    clients, _, _ = _federation(6, 5)
    lax = SecAggServer(
        session=b"A",
        round=2,
        threshold=4,
        dimension=DIM,
        neighbours=neighbours_complete(range(1, 7)),
    )
    directory = lax.collect_keys([c.advertise() for c in clients.values()])
    with pytest.raises(RemoteProtocolError, match="not above two thirds"):
        clients[1].share_keys(directory)


def test_a_signing_key_must_be_the_enrolled_one() -> None:
    with pytest.raises(ConfigurationError, match="not the one enrolled"):
        SecAggClient(
            1, session=b"A", round=1, signing_key=SigningKey(), verify_keys={1: SigningKey().public}
        )
    with pytest.raises(ConfigurationError, match="both signing_key and verify_keys"):
        SecAggClient(1, session=b"A", round=1, signing_key=SigningKey())


@pytest.mark.parametrize("n", [10, 50, 100, 1000])
def test_active_plans_have_a_threshold_above_two_thirds(n) -> None:
    plan = plan_round(n, active=True)
    assert 3 * plan.threshold > 2 * (plan.degree + 1)
    assert plan.abort_probability <= 2.0**-20 or plan.complete


def test_on_a_sparse_graph_each_revealed_peer_needs_confirmations_from_its_own_neighbourhood():
    """SecAgg+ in the active mode: t is a share of a neighbourhood, not of all clients, so
    two groups of t could each confirm contradicting lists. A client reveals a share of v only
    when t of v's own neighbourhood signed the lists."""
    from veil.secagg.protocol import Expectation, derived_graph

    n, degree, t = 12, 6, 5
    signing = {u: SigningKey() for u in range(1, n + 1)}
    enrolled = {u: k.public for u, k in signing.items()}
    clients = {
        u: SecAggClient(
            u,
            session=b"A",
            round=1,
            vector=np.full(DIM, u, np.uint32),
            signing_key=signing[u],
            verify_keys=enrolled,
            expect=Expectation(threshold=t, degree=degree),
        )
        for u in signing
    }
    server = SecAggServer(
        session=b"A",
        round=1,
        threshold=t,
        dimension=DIM,
        neighbours=neighbours_complete(range(1, n + 1)),
        active=True,
        degree=degree,
        verify_keys=enrolled,
    )
    directory = server.collect_keys([c.advertise() for c in clients.values()])
    assert directory.neighbours == derived_graph(b"A", 1, directory.keys, degree)
    routed = server.collect_shares([c.share_keys(directory) for c in clients.values()])
    request = server.collect_masked([clients[u].masked_input(routed[u]) for u in clients])
    checks = {u: clients[u].consistency(request) for u in clients}
    graph = directory.neighbours
    # a proof signed by t clients, none of them around client 1's neighbour v
    v = min(graph[1])
    far = [u for u in clients if u not in graph[v] and u != v][:t]
    assert len(far) == t
    thin = ConsistencyProof(request, {u: checks[u].signature for u in far})
    with pytest.raises(RemoteProtocolError, match="neighbourhood confirmed the lists"):
        clients[1].unmask(thin)
    full = server.collect_consistency(list(checks.values()))
    out = server.finish(
        [clients[u].unmask(full) for u in clients if u != 1] + [clients[1].unmask(full)]
    )
    np.testing.assert_array_equal(out, np.full(DIM, sum(range(1, n + 1)), np.uint32))


def test_the_server_drops_a_bad_signature_instead_of_passing_it_on() -> None:
    clients, _, inputs = _federation(5, 4)
    enrolled = {u: c._verify_keys[u] for u, c in clients.items()}
    server = SecAggServer(
        session=b"A",
        round=2,
        threshold=4,
        dimension=DIM,
        neighbours=neighbours_complete(range(1, 6)),
        active=True,
        verify_keys=enrolled,
    )
    alive, request = _up_to_consistency(clients, server)
    checks = [clients[u].consistency(request) for u in sorted(alive)]
    checks[0] = dataclasses.replace(checks[0], signature=bytes(64))  # garbage from client 1
    proof = server.collect_consistency(checks)
    assert 1 not in proof.signatures and len(proof.signatures) == 4
    out = server.finish([clients[u].unmask(proof) for u in sorted(alive)])
    expected = np.zeros(DIM, dtype=np.uint32)
    for x in inputs.values():
        expected += x
    np.testing.assert_array_equal(out, expected)
