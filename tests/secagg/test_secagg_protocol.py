"""SecAgg rounds with dropouts at every stage: the sum of the survivors, or an abort exactly
when fewer than the threshold remain; and the refusals a client makes."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from veil.errors import AuthenticationError, ConfigurationError, RemoteProtocolError
from veil.secagg.protocol import (
    SecAggClient,
    SecAggServer,
    UnmaskRequest,
    neighbours_complete,
)


def _round(
    n: int, threshold: int, drops: list[set[int]], dim: int = 16, seed: int = 0
) -> tuple[np.ndarray | None, set[int], dict[int, np.ndarray]]:
    """Run one round; ``drops[k]`` are the clients that vanish before stage k (0: advertise,
    1: share, 2: masked input, 3: unmask). Returns the output (None if it aborted), the
    clients whose input it must contain, and the inputs."""
    rng = np.random.default_rng(seed)
    inputs = {
        u: rng.integers(0, 2**32, size=dim, dtype=np.uint64).astype(np.uint32)
        for u in range(1, n + 1)
    }
    clients = {u: SecAggClient(u, session=b"S", round=7, vector=x) for u, x in inputs.items()}
    server = SecAggServer(
        session=b"S",
        round=7,
        threshold=threshold,
        dimension=dim,
        neighbours=neighbours_complete(range(1, n + 1)),
    )
    alive = set(clients)
    try:
        alive -= drops[0]
        directory = server.collect_keys([clients[u].advertise() for u in sorted(alive)])
        alive -= drops[1]
        routed = server.collect_shares([clients[u].share_keys(directory) for u in sorted(alive)])
        alive -= drops[2]
        request = server.collect_masked([clients[u].masked_input(routed[u]) for u in sorted(alive)])
        survivors = set(request.survivors)
        alive -= drops[3]
        out = server.finish([clients[u].unmask(request) for u in sorted(alive)])
    except RemoteProtocolError as exc:
        aborted = str(exc)
    else:
        return out, survivors, inputs
    assert "threshold" in aborted or "cannot reconstruct" in aborted, aborted
    return None, set(), inputs


def test_a_round_without_dropouts_gives_the_exact_sum() -> None:
    out, survivors, inputs = _round(5, 3, [set(), set(), set(), set()])
    assert survivors == {1, 2, 3, 4, 5}
    expected = np.zeros(16, dtype=np.uint32)
    for x in inputs.values():
        expected += x
    np.testing.assert_array_equal(out, expected)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(3, 7),
    data=st.data(),
)
def test_random_dropouts_at_every_stage(n, data) -> None:
    threshold = data.draw(st.integers(2, n))
    everyone = list(range(1, n + 1))
    drops = [set(data.draw(st.lists(st.sampled_from(everyone), max_size=2))) for _ in range(4)]
    out, survivors, inputs = _round(n, threshold, drops, seed=data.draw(st.integers(0, 99)))
    left = [set(everyone)]
    for d in drops:
        left.append(left[-1] - d)
    if min(len(s) for s in left[1:]) < threshold:
        assert out is None  # aborted, exactly when fewer than t remained at some stage
        return
    assert out is not None
    assert survivors == left[3]
    expected = np.zeros(16, dtype=np.uint32)
    for u in survivors:
        expected += inputs[u]
    np.testing.assert_array_equal(out, expected)


def test_the_masked_vector_looks_uniform_whatever_the_input() -> None:
    """A zero input and an all-ones input, masked: each byte of the masked words is uniform
    (chi-square over 256 values, 40,000 bytes, false alarm 1e-4)."""
    from scipy import stats

    for value in (0, 2**32 - 1):
        server = SecAggServer(
            session=b"S",
            round=1,
            threshold=2,
            dimension=10_000,
            neighbours=neighbours_complete(range(1, 4)),
        )
        clients = [
            SecAggClient(u, session=b"S", round=1, vector=np.full(10_000, value, dtype=np.uint32))
            for u in (1, 2, 3)
        ]
        directory = server.collect_keys([c.advertise() for c in clients])
        routed = server.collect_shares([c.share_keys(directory) for c in clients])
        y = clients[0].masked_input(routed[1]).vector
        counts = np.bincount(y.view(np.uint8), minlength=256)
        assert stats.chisquare(counts).pvalue > 1e-4


def _to_masking(n: int = 4, threshold: int = 3):  # type: ignore[no-untyped-def]
    clients = {
        u: SecAggClient(u, session=b"S", round=1, vector=np.arange(4, dtype=np.uint32))
        for u in range(1, n + 1)
    }
    server = SecAggServer(
        session=b"S",
        round=1,
        threshold=threshold,
        dimension=4,
        neighbours=neighbours_complete(range(1, n + 1)),
    )
    directory = server.collect_keys([c.advertise() for c in clients.values()])
    shares = [c.share_keys(directory) for c in clients.values()]
    return clients, server, directory, shares


def test_a_client_refuses_to_reveal_both_shares_of_one_peer() -> None:
    clients, server, _, shares = _to_masking()
    routed = server.collect_shares(shares)
    for u, c in clients.items():
        c.masked_input(routed[u])
    with pytest.raises(RemoteProtocolError, match="both surviving and dropped"):
        clients[1].unmask(UnmaskRequest(frozenset({1, 2, 3}), frozenset({3})))


def test_a_client_refuses_fewer_survivors_than_the_threshold() -> None:
    clients, server, _, shares = _to_masking()
    routed = server.collect_shares(shares)
    for u, c in clients.items():
        c.masked_input(routed[u])
    with pytest.raises(RemoteProtocolError, match="fewer survivors"):
        clients[1].unmask(UnmaskRequest(frozenset({1, 2}), frozenset({3, 4})))


def test_duplicate_keys_and_thresholds_below_two_are_refused() -> None:
    clients = {
        u: SecAggClient(u, session=b"S", round=1, vector=np.zeros(2, dtype=np.uint32))
        for u in (1, 2, 3)
    }
    adverts = [c.advertise() for c in clients.values()]
    adverts[2] = dataclasses.replace(adverts[2], mask_key=adverts[0].mask_key)
    server = SecAggServer(
        session=b"S", round=1, threshold=2, dimension=2, neighbours=neighbours_complete(range(1, 4))
    )
    directory = server.collect_keys(adverts)
    with pytest.raises(RemoteProtocolError, match="duplicate"):
        clients[1].share_keys(directory)
    clean = SecAggServer(
        session=b"S", round=1, threshold=2, dimension=2, neighbours=neighbours_complete(range(1, 4))
    ).collect_keys(
        [
            c.advertise()
            for c in (
                SecAggClient(u, session=b"S", round=1, vector=np.zeros(2, dtype=np.uint32))
                for u in (1, 2, 3)
            )
        ]
    )
    fresh = SecAggClient(2, session=b"S", round=1, vector=np.zeros(2, dtype=np.uint32))
    fresh.advertise()
    keys = dict(clean.keys)
    keys[2] = (fresh._mask_key.public, fresh._share_key.public)
    with pytest.raises(RemoteProtocolError, match="below 2"):
        fresh.share_keys(dataclasses.replace(clean, keys=keys, threshold=1))


def test_a_share_replayed_into_another_round_or_rerouted_fails_to_open() -> None:
    clients, server, _, shares = _to_masking()
    routed = server.collect_shares(shares)
    # re-route: give client 2 the ciphertext that client 1 sealed for client 3
    stolen = dataclasses.replace(routed[2], sealed={**routed[2].sealed, 1: routed[3].sealed[1]})
    with pytest.raises(AuthenticationError):
        clients[2].masked_input(stolen)
    # replay into another round: a client of round 2 with the same keys cannot open round 1's
    other = SecAggClient(3, session=b"S", round=2, vector=np.zeros(4, dtype=np.uint32))
    other._mask_key, other._share_key = clients[3]._mask_key, clients[3]._share_key
    other.stage = clients[3].stage
    other._directory = clients[3]._directory
    other._self_seed = clients[3]._self_seed
    with pytest.raises(AuthenticationError):
        other.masked_input(routed[3])


def test_the_secagg_plus_graph_is_symmetric_and_regular() -> None:
    from veil.privacy import InsecureSeededRandom
    from veil.secagg.protocol import neighbours_harary

    graph = neighbours_harary(range(1, 31), degree=6, rng=InsecureSeededRandom(0))
    assert all(len(vs) == 6 and u not in vs for u, vs in graph.items())
    assert all(u in graph[v] for u, vs in graph.items() for v in vs)
    other = neighbours_harary(range(1, 31), degree=6, rng=InsecureSeededRandom(1))
    assert graph != other  # the labelling is random
    with pytest.raises(ConfigurationError, match="even integer"):
        neighbours_harary(range(1, 31), degree=5)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10**6), data=st.data())
def test_a_secagg_plus_round_with_dropouts_sums_the_survivors(seed, data) -> None:
    from veil.privacy import InsecureSeededRandom
    from veil.secagg.protocol import neighbours_harary

    n, degree, threshold = 12, 6, 4
    rng = np.random.default_rng(seed)
    inputs = {
        u: rng.integers(0, 2**32, size=8, dtype=np.uint64).astype(np.uint32)
        for u in range(1, n + 1)
    }
    graph = neighbours_harary(range(1, n + 1), degree=degree, rng=InsecureSeededRandom(seed))
    clients = {u: SecAggClient(u, session=b"S", round=1, vector=x) for u, x in inputs.items()}
    server = SecAggServer(session=b"S", round=1, threshold=threshold, dimension=8, neighbours=graph)
    dropped = set(data.draw(st.lists(st.integers(1, n), max_size=1)))
    directory = server.collect_keys([c.advertise() for c in clients.values()])
    routed = server.collect_shares([c.share_keys(directory) for c in clients.values()])
    alive = [u for u in clients if u not in dropped]
    request = server.collect_masked([clients[u].masked_input(routed[u]) for u in alive])
    out = server.finish([clients[u].unmask(request) for u in alive])
    expected = np.zeros(8, dtype=np.uint32)
    for u in alive:
        expected += inputs[u]
    np.testing.assert_array_equal(out, expected)


def test_a_reflected_share_fails_to_open_because_of_the_associated_data() -> None:
    """Client 1's ciphertext for client 2, handed back to client 1 as if 2 had sent it: the
    channel key is the same both ways, only the associated data (sender, recipient) differs."""
    clients, server, _, shares = _to_masking()
    routed = server.collect_shares(shares)
    mine_for_2 = next(s for s in shares if s.client == 1).sealed[2]
    reflected = dataclasses.replace(routed[1], sealed={**routed[1].sealed, 2: mine_for_2})
    with pytest.raises(AuthenticationError):
        clients[1].masked_input(reflected)


def test_the_server_runs_each_stage_once() -> None:
    from veil.errors import LocalProtocolError

    clients, server, _, shares = _to_masking()
    routed = server.collect_shares(shares)
    masked = [c.masked_input(routed[u]) for u, c in clients.items()]
    server.collect_masked(masked[:3])
    with pytest.raises(LocalProtocolError):  # a second request could mix seed and key shares
        server.collect_masked(masked)


def test_clients_refuse_survivors_split_into_pieces() -> None:
    """On a cycle, dropping two opposite clients leaves two arcs whose masks cancel inside
    each: the server could sum an arc. The clients refuse to unmask."""
    from veil.privacy import InsecureSeededRandom
    from veil.secagg.protocol import neighbours_harary

    graph = neighbours_harary(range(1, 9), degree=2, rng=InsecureSeededRandom(4))
    order = [1]
    while len(order) < 8:
        order.append(next(v for v in graph[order[-1]] if v not in order))
    cut = {order[0], order[4]}
    clients = {
        u: SecAggClient(u, session=b"S", round=1, vector=np.full(2, u, dtype=np.uint32))
        for u in graph
    }
    server = SecAggServer(session=b"S", round=1, threshold=2, dimension=2, neighbours=graph)
    directory = server.collect_keys([c.advertise() for c in clients.values()])
    routed = server.collect_shares([c.share_keys(directory) for c in clients.values()])
    alive = [u for u in clients if u not in cut]
    request = server.collect_masked([clients[u].masked_input(routed[u]) for u in alive])
    for u in alive:
        with pytest.raises(RemoteProtocolError, match=r"connected|neighbours"):
            clients[u].unmask(request)


def test_a_corrupted_share_aborts_instead_of_corrupting_the_sum() -> None:
    clients, server, _, shares = _to_masking(n=5, threshold=3)
    routed = server.collect_shares(shares)
    request = server.collect_masked([clients[u].masked_input(routed[u]) for u in (1, 2, 3, 4)])
    answers = [clients[u].unmask(request) for u in (1, 2, 3, 4)]
    bad = dict(answers[0].key_shares)
    bad[5] = (bad[5] + 1) % 2**256
    answers[0] = dataclasses.replace(answers[0], key_shares=bad)
    with pytest.raises(RemoteProtocolError, match="inconsistent"):
        server.finish(answers)


def test_a_failed_finish_is_retried_without_the_client_that_sent_bad_shares() -> None:
    from veil.errors import LocalProtocolError

    clients, server, _, shares = _to_masking(n=5, threshold=3)
    routed = server.collect_shares(shares)
    with pytest.raises(LocalProtocolError, match="has not run"):
        server.finish_without(1)
    request = server.collect_masked([clients[u].masked_input(routed[u]) for u in (1, 2, 3, 4)])
    answers = [clients[u].unmask(request) for u in (1, 2, 3, 4)]
    bad = dict(answers[0].key_shares)
    bad[5] = (bad[5] + 1) % 2**256  # client 1 lies about dropped client 5's key
    answers[0] = dataclasses.replace(answers[0], key_shares=bad)
    with pytest.raises(RemoteProtocolError, match="inconsistent"):
        server.finish(answers)
    with pytest.raises(RemoteProtocolError, match="inconsistent"):
        server.finish_without(2)  # an honest client left out: client 1's lie is still there
    with pytest.raises(LocalProtocolError, match="no unmasking answer"):
        server.finish_without(5)  # dropped: it sent nothing
    # each retry starts from all the failed call's answers, so 2's is back in this one
    total = server.finish_without(1)
    np.testing.assert_array_equal(total, 4 * np.arange(4, dtype=np.uint32))  # 1..4's inputs
    with pytest.raises(LocalProtocolError, match="succeeded"):
        server.finish_without(2)
    with pytest.raises(LocalProtocolError):
        server.finish(answers)


def test_a_finish_that_succeeded_is_not_retried() -> None:
    from veil.errors import LocalProtocolError

    clients, server, _, shares = _to_masking()
    routed = server.collect_shares(shares)
    request = server.collect_masked([c.masked_input(routed[u]) for u, c in clients.items()])
    total = server.finish([c.unmask(request) for c in clients.values()])
    np.testing.assert_array_equal(total, 4 * np.arange(4, dtype=np.uint32))
    with pytest.raises(LocalProtocolError, match="succeeded"):
        server.finish_without(1)


def test_the_server_view_keeps_pairwise_masks_after_removing_the_self_mask() -> None:
    """Even with every b_u rebuilt, y_u - PRG(b_u) is x_u plus pairwise masks: not x_u, and
    uniform (chi-square over bytes, false alarm 1e-4)."""
    from scipy import stats

    from veil.secagg import shamir
    from veil.secagg.protocol import _pair_mask, _self_mask

    assert np.array_equal(
        _pair_mask(b"k" * 32, b"S", 1, 1, 2, 8), _pair_mask(b"k" * 32, b"S", 1, 2, 1, 8)
    )
    assert np.any(_pair_mask(b"k" * 32, b"S", 1, 1, 2, 8))
    dim = 10_000
    clients = {
        u: SecAggClient(u, session=b"S", round=1, vector=np.zeros(dim, dtype=np.uint32))
        for u in (1, 2, 3)
    }
    server = SecAggServer(
        session=b"S",
        round=1,
        threshold=2,
        dimension=dim,
        neighbours=neighbours_complete(range(1, 4)),
    )
    directory = server.collect_keys([c.advertise() for c in clients.values()])
    routed = server.collect_shares([c.share_keys(directory) for c in clients.values()])
    masked = {u: clients[u].masked_input(routed[u]) for u in clients}
    request = server.collect_masked(list(masked.values()))
    answers = [clients[u].unmask(request) for u in clients]
    seed = shamir.combine({a.client: a.seed_shares[1] for a in answers}, threshold=2)
    seen = masked[1].vector - _self_mask(seed, b"S", 1, dim)
    assert np.any(seen != 0)
    assert stats.chisquare(np.bincount(seen.view(np.uint8), minlength=256)).pvalue > 1e-4


def test_float_vectors_and_non_canonical_keys_are_refused() -> None:
    from veil.errors import DataError
    from veil.secagg import crypto

    with pytest.raises(DataError, match="Quantizer"):
        SecAggClient(1, session=b"S", round=1, vector=np.array([0.5, -0.25]))
    key = crypto.AgreementKey()
    other = bytearray(crypto.AgreementKey().public)
    other[31] |= 0x80  # the same point to X25519, another byte string
    with pytest.raises(RemoteProtocolError, match="canonical"):
        key.exchange(bytes(other))
