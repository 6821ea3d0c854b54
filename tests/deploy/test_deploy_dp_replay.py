"""Central DP over the wire adds exactly the noise its seed and round numbers determine: the
deployed model equals the round protocol replayed here, in one process, on the same hospitals'
updates with each round's randomness from (seed, round). (The simulator draws every party's
randomness from one seeded stream, so it cannot reproduce the deployment's noise; see
test_deploy_e2e for the comparison with the simulator without noise.)"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import torch
from deploy_support import HOSPITALS

from veil.deploy import Agent, Coordinator, FederationConfig, ModelSpec, StateStore
from veil.deploy.coordinator import build_strategy
from veil.federated import FederatedServer, TrainConfig, TrainResult
from veil.federated.training import ClientData, ParamLayout, train_clients
from veil.ledger import Ledger


def config(tmp_path: Path, seed: int) -> FederationConfig:
    return FederationConfig(
        name="hospitals",
        clients=HOSPITALS,
        rounds=2,
        model=ModelSpec(features=30),
        state=tmp_path / f"coordinator-{seed}.sqlite",
        stage_seconds=30.0,
        min_clients=3,
        seed=seed,
        dp="client",
        noise_multiplier=1.0,
        clip_norm=1.0,
        ledger=tmp_path / "ledger.sqlite",
        scope="hospitals/client",
        epsilon=100.0,
    )


def local(data_files: Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    with np.load(data_files / f"{name}.npz") as npz:
        return npz["x"], npz["y"]


def replay(tmp_path: Path, data_files: Path, settings: FederationConfig) -> np.ndarray:
    """The coordinator's rounds without the network: the same server, strategy and
    randomness, each hospital's update computed here."""
    co = Coordinator(settings, insecure=True, port=0)  # for its round randomness only
    co.stop(grace=0)
    layout = ParamLayout(settings.model.build())
    server = FederatedServer(
        parameters=layout.vector(),
        clients=settings.clients,
        strategy=build_strategy(settings),
        config=TrainConfig(local_epochs=1, learning_rate=0.1),
        rounds=settings.rounds,
    )
    data = {n: ClientData(*map(torch.from_numpy, local(data_files, n))) for n in HOSPITALS}
    ledger = Ledger(str(tmp_path / "replay-ledger.sqlite"))
    ledger.set_budget("replay/client", epsilon=1000.0, delta=1e-5)
    try:
        for number in range(1, settings.rounds + 1):
            rng = co.round_rng(number)
            event = server.round_event()
            assert event is not None
            with ledger.reserve("replay/client", event) as paid:
                for ins in server.start_round(rng, reservation=paid):
                    (out,) = train_clients(
                        layout,
                        ins.parameters,
                        [data[ins.client_id]],
                        ins.config,
                        generator=torch.Generator(),
                    )
                    update = out.update.astype(ins.parameters.dtype, copy=False)
                    server.receive(
                        TrainResult(number, ins.client_id, update, out.num_examples, out.metrics)
                    )
                server.close_round(rng)
    finally:
        ledger.close()
    return server.parameters


def test_deployed_central_dp_adds_the_noise_of_its_seed(tmp_path: Path, data_files: Path) -> None:
    settings = config(tmp_path, seed=11)
    co = Coordinator(settings, insecure=True, port=0)
    co.start()
    agents = []
    for name in HOSPITALS:
        x, y = local(data_files, name)
        agents.append(
            Agent(f"127.0.0.1:{co.port}", x=x, y=y, name=name, retry_seconds=5.0, allow_plain=True)
        )
    threads = [threading.Thread(target=a.run) for a in agents]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert co.wait(60)
    finally:
        co.stop(grace=0.1)
    assert co.error is None
    assert [a.report.rounds for a in agents] == [[1, 2]] * 3
    store = StateStore(settings.state)
    try:
        latest = store.latest()
    finally:
        store.close()
    assert latest is not None and latest[0] == 2
    deployed = latest[1]["parameters"]
    expected = replay(tmp_path, data_files, settings)
    # float32 training of the same examples in another order differs in the last bits
    np.testing.assert_allclose(deployed, expected, rtol=0, atol=1e-5)
    # and the comparison sees the noise: another seed's noise is far from it
    other = replay(tmp_path, data_files, config(tmp_path, seed=12))
    assert np.abs(other - deployed).max() > 1e-2
