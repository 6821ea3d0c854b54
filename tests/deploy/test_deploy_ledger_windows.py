"""What a coordinator restart does with the ledger reservations a crash left pending, in every
window a SIGKILL can hit, and what an aborted round costs. (The real SIGKILL is in
test_deploy_e2e; here the states a kill leaves are made directly.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from deploy_support import Events, make_config, poll, submit_update

from veil.deploy import Coordinator, StateStore
from veil.ledger import Ledger

SCOPE = "hospitals/client"


def entries(tmp_path: Path) -> dict[str, Any]:
    ledger = Ledger(str(tmp_path / "ledger.sqlite"))
    try:
        return {e.entry_id: e for e in ledger.history(SCOPE) if e.kind == "reserve"}
    finally:
        ledger.close()


def reserve(tmp_path: Path, co: Coordinator, number: int) -> str:
    """A reservation as the coordinator makes it (its event and purpose), nothing else."""
    ledger = Ledger(str(tmp_path / "ledger.sqlite"))
    try:
        event = co.server.round_event()
        assert event is not None
        return ledger.reserve(SCOPE, event, purpose=f"hospitals: DP-FedAvg round {number}").id
    finally:
        ledger.close()


def fresh(tmp_path: Path, **settings: object) -> Coordinator:
    co = Coordinator(make_config(tmp_path, **settings), insecure=True, port=0)
    co.stop(grace=0)
    return co


def test_killed_between_the_ledger_and_the_store_the_round_is_charged_once(
    tmp_path: Path,
) -> None:
    """The ledger reserved round 1 and the coordinator died before noting it: the restart
    finds the entry by its purpose and round 1 runs under it. One reservation, committed."""
    co = fresh(tmp_path, rounds=1, min_clients=1)
    orphan = reserve(tmp_path, co, 1)
    again = Coordinator(make_config(tmp_path, rounds=1, min_clients=1), insecure=True, port=0)
    again.start()
    ch, stream = poll(again, "hospital-a", wait=30.0)
    try:
        with ch:
            header = next(iter(stream))
            del header
            reply = submit_update(again, "hospital-a", round=1, examples=10, metrics={})
        assert isinstance(reply, bytes)
        assert again.wait(60)
    finally:
        again.stop(grace=0.1)
    assert again.error is None
    found = entries(tmp_path)
    assert list(found) == [orphan]
    assert found[orphan].status == "committed"


def test_every_pending_reservation_is_settled_on_restart(tmp_path: Path) -> None:
    """Round 1 checkpointed but not committed: committed. A pending entry for a round the
    checkpoint cannot explain: closed as failed (it still counts). None stays pending."""
    co = fresh(tmp_path)
    checkpointed = reserve(tmp_path, co, 1)
    stray = reserve(tmp_path, co, 5)
    store = StateStore(tmp_path / "coordinator.sqlite")
    store.reserved(1, checkpointed)
    store.checkpoint(1, {**co.server.state(), "round": 1}, {"round": 1})
    store.close()
    assert fresh(tmp_path).resumed_from == 1
    found = entries(tmp_path)
    assert found[checkpointed].status == "committed"
    assert found[stray].status == "failed"


def test_distributed_dp_a_round_cut_short_after_unmasking_began_is_charged(
    tmp_path: Path,
) -> None:
    """Distributed DP, killed in round 1 after the coordinator asked for unmasking shares
    (it may have seen the noisy sum): the reservation is closed (counted) and the rerun pays
    anew. Killed before that point: the reservation is kept for the rerun."""
    distributed = {"dp": "distributed", "secure": "secagg", "secure_dropout": 0.34}
    co = fresh(tmp_path, **distributed)
    exposed = reserve(tmp_path, co, 1)
    store = StateStore(tmp_path / "coordinator.sqlite")
    store.reserved(1, exposed)
    store.set_meta(f"exposed:{exposed}", "1")
    store.close()
    fresh(tmp_path, **distributed)
    assert entries(tmp_path)[exposed].status == "failed"
    store = StateStore(tmp_path / "coordinator.sqlite")
    assert store.reservation(1) is None  # the rerun reserves anew
    hidden = reserve(tmp_path, co, 1)
    store.reserved(1, hidden)
    store.close()
    fresh(tmp_path, **distributed)
    assert entries(tmp_path)[hidden].status == "pending"
    store = StateStore(tmp_path / "coordinator.sqlite")
    assert store.reservation(1) == hidden  # kept for the rerun of round 1
    store.close()


def test_distributed_dp_an_aborted_round_that_released_nothing_is_not_charged(
    tmp_path: Path, events: Events
) -> None:
    """Distributed DP: round 1 aborts at its first stage (its three clients fetch the task
    and send nothing). Nothing left the clients, so its reservation pays for round 2 instead
    of being committed, and stays so across a restart."""
    settings = {
        "dp": "distributed",
        "secure": "secagg",
        "secure_dropout": 0.34,
        "min_clients": 3,
        "stage_seconds": 1.0,
    }
    co = Coordinator(make_config(tmp_path, **settings), insecure=True, port=0)
    co.start()
    calls = [poll(co, name, wait=30.0) for name in ("hospital-a", "hospital-b", "hospital-c")]
    try:
        for _, stream in calls:
            next(iter(stream))  # the task of round 1; no answer follows
        events.wait_for(lambda seen: any(e["event"] == "round_closed" for e in seen))
    finally:
        for ch, stream in calls:
            stream.cancel()
            ch.close()
        co.stop(grace=0.1)
    (closed,) = events.named("round_closed")
    assert closed["aggregated"] is False
    assert events.named("reservation_carried_over") == [
        {**events.named("reservation_carried_over")[0], "round": 1, "to": 2}
    ]
    (entry,) = entries(tmp_path).values()
    assert entry.status == "pending"
    again = fresh(tmp_path, **settings)  # a restart keeps it for round 2
    assert again.resumed_from == 1
    store = StateStore(tmp_path / "coordinator.sqlite")
    assert store.reservation(2) == entry.entry_id
    store.close()
    assert entries(tmp_path)[entry.entry_id].status == "pending"


def test_a_reservation_of_another_cost_is_not_kept_for_the_rerun(tmp_path: Path) -> None:
    """Killed in round 1; restarted with another noise multiplier: the old reservation cannot
    pay for the new round 1, so it is closed (counted) rather than left pending forever."""
    co = fresh(tmp_path)
    old = reserve(tmp_path, co, 1)
    store = StateStore(tmp_path / "coordinator.sqlite")
    store.reserved(1, old)
    store.close()
    fresh(tmp_path, noise_multiplier=2.0)
    assert entries(tmp_path)[old].status == "failed"
