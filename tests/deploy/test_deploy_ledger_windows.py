"""What a coordinator restart does with the ledger reservations a crash left pending, in every
window a SIGKILL can hit, and what an aborted or failed round costs. (The real SIGKILL is in
test_deploy_e2e; here the states a kill leaves are made directly.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from deploy_support import Events, make_config, poll, submit_update

from veil.deploy import Coordinator, StateStore
from veil.errors import ConfigurationError
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


def spent_events(tmp_path: Path) -> int:
    """How many reservations count in the scope."""
    ledger = Ledger(str(tmp_path / "ledger.sqlite"))
    try:
        return ledger.status(SCOPE).events
    finally:
        ledger.close()


def test_killed_between_the_ledger_and_the_store_the_round_is_charged_once(
    tmp_path: Path,
) -> None:
    """The ledger reserved round 1 and the coordinator died before noting it: the restart
    finds the entry by its purpose and abandons it (nothing of round 1 had started), and
    round 1 runs under a new reservation. One spend counts."""
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
    assert found.pop(orphan).status == "abandoned"
    assert [e.status for e in found.values()] == ["committed"]
    assert spent_events(tmp_path) == 1


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
    (it may have seen the noisy sum): the reservation is closed as failed (counted) and the
    rerun pays anew. Killed before that point: it is abandoned (not counted), and the rerun
    pays anew too."""
    distributed = {"dp": "distributed", "secure": "secagg", "secure_dropout": 0.34}
    co = fresh(tmp_path, **distributed)
    exposed = reserve(tmp_path, co, 1)
    store = StateStore(tmp_path / "coordinator.sqlite")
    store.reserved(1, exposed)
    store.set_meta(f"exposed:{exposed}", "1")
    store.close()
    fresh(tmp_path, **distributed)
    assert entries(tmp_path)[exposed].status == "failed"
    hidden = reserve(tmp_path, co, 1)
    store = StateStore(tmp_path / "coordinator.sqlite")
    store.reserved(1, hidden)
    store.close()
    fresh(tmp_path, **distributed)
    assert entries(tmp_path)[hidden].status == "abandoned"
    assert spent_events(tmp_path) == 1  # the exposed round only


def test_a_pending_reservation_another_one_replaced_in_the_store_is_charged(
    tmp_path: Path,
) -> None:
    """Two pending reservations for round 1, the store noting the second: the first is not
    one this coordinator can account for, so it is closed as failed (counted), never
    abandoned; the noted one is abandoned."""
    co = fresh(tmp_path)
    unexplained = reserve(tmp_path, co, 1)
    noted = reserve(tmp_path, co, 1)
    store = StateStore(tmp_path / "coordinator.sqlite")
    store.reserved(1, noted)
    store.close()
    fresh(tmp_path)
    found = entries(tmp_path)
    assert (found[unexplained].status, found[noted].status) == ("failed", "abandoned")


@pytest.mark.parametrize(
    ("mode", "expected"), [("distributed", "abandoned"), ("client", "committed")]
)
def test_what_the_last_round_costs_when_it_aborts_at_its_first_stage(
    tmp_path: Path, events: Events, mode: str, expected: str
) -> None:
    """The federation's only (so last) round aborts at its first stage: its three clients
    fetch the task and send nothing. Under distributed DP nothing left the clients (the
    model does not move): its reservation is abandoned and does not count, across a restart
    too. Under central DP the coordinator adds its noise to the empty sum and the model
    moves by it (checkpointed, and sent with any next round): released, so charged."""
    settings = {
        "dp": mode,
        "secure": "secagg",
        "secure_dropout": 0.34,
        "min_clients": 3,
        "stage_seconds": 1.0,
        "rounds": 1,
    }
    co = Coordinator(make_config(tmp_path, **settings), insecure=True, port=0)
    co.start()
    calls = [poll(co, name, wait=30.0) for name in ("hospital-a", "hospital-b", "hospital-c")]
    try:
        for _, stream in calls:
            next(iter(stream))  # the task of round 1; no answer follows
        assert co.wait(60)
    finally:
        for ch, stream in calls:
            stream.cancel()
            ch.close()
        co.stop(grace=0.1)
    assert co.error is None
    (closed,) = events.named("round_closed")
    assert closed["aggregated"] is (mode == "client")
    (entry,) = entries(tmp_path).values()
    assert entry.status == expected
    assert spent_events(tmp_path) == (0 if mode == "distributed" else 1)
    if mode == "distributed":
        assert [e["round"] for e in events.named("reservation_abandoned")] == [1]
        assert closed["epsilon_spent"] is None
    again = fresh(tmp_path, **settings)  # a restart finds nothing to settle
    assert again.resumed_from == 1
    assert entries(tmp_path)[entry.entry_id].status == expected


def _one_round_in_process(tmp_path: Path) -> Coordinator:
    """A central-DP coordinator (plain rounds) whose driver is run by the test: two clients
    look connected, and stages close after a fifth of a second."""
    co = Coordinator(make_config(tmp_path, stage_seconds=0.2), insecure=True, port=0)
    co._polls.update({"hospital-a": 1, "hospital-b": 2})
    return co


def test_central_dp_a_round_that_fails_before_its_noise_is_drawn_is_not_charged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    co = _one_round_in_process(tmp_path)

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("the round could not start")

    monkeypatch.setattr(co.server, "start_round", broken)
    try:
        with pytest.raises(RuntimeError):
            co._one_round()
    finally:
        co.stop(grace=0)
    (entry,) = entries(tmp_path).values()
    assert entry.status == "abandoned"
    assert spent_events(tmp_path) == 0


def test_central_dp_a_round_that_fails_once_its_noise_may_be_drawn_is_charged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    co = _one_round_in_process(tmp_path)
    close_round = co.server.close_round

    def broken(*args: Any, **kwargs: Any) -> None:
        close_round(*args, **kwargs)  # the noise is drawn, then something breaks
        raise RuntimeError("the round could not be recorded")

    monkeypatch.setattr(co.server, "close_round", broken)
    try:
        with pytest.raises(RuntimeError):
            co._one_round()
    finally:
        co.stop(grace=0)
    (entry,) = entries(tmp_path).values()
    assert entry.status == "failed"
    assert spent_events(tmp_path) == 1


def test_a_round_cut_short_is_abandoned_whatever_the_settings_now(tmp_path: Path) -> None:
    """Killed in round 1; restarted with another noise multiplier: nothing of round 1 was
    released, so its reservation is abandoned (never left pending), whatever its cost."""
    co = fresh(tmp_path)
    old = reserve(tmp_path, co, 1)
    store = StateStore(tmp_path / "coordinator.sqlite")
    store.reserved(1, old)
    store.close()
    fresh(tmp_path, noise_multiplier=2.0)
    assert entries(tmp_path)[old].status == "abandoned"


def test_a_second_coordinator_of_a_running_one_is_refused_and_settles_nothing(
    tmp_path: Path,
) -> None:
    """The same command started twice (or a restart while the old process still runs): the
    second must not take the running round's reservation for one a crash left and abandon it
    while the first releases that round. It is refused before settling anything; once the
    first stops (or dies: the kernel drops its lock), a restart proceeds."""
    running = Coordinator(make_config(tmp_path), insecure=True, port=0)
    try:
        live = reserve(tmp_path, running, 1)  # round 1 in progress, not yet exposed
        running.store.reserved(1, live)
        with pytest.raises(ConfigurationError, match="another coordinator is running"):
            Coordinator(make_config(tmp_path), insecure=True, port=0)
        assert entries(tmp_path)[live].status == "pending"
    finally:
        running.stop(grace=0)
    fresh(tmp_path)  # a restart after the first has gone settles it as a cut-short round
    assert entries(tmp_path)[live].status == "abandoned"


def test_a_first_start_creates_the_folder_of_its_state_and_lock(tmp_path: Path) -> None:
    state = tmp_path / "not" / "yet" / "coordinator.sqlite"
    fresh(tmp_path, state=state)
    assert state.exists()
    assert Path(f"{state}.lock").exists()
