"""The coordinator's guards, in one process over plaintext loopback: a round waits for
``min_clients``, keys and shares that would sink a round drop their sender instead, long polls
cannot starve the other calls, and client-reported counts are bounded."""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from deploy_support import HOSPITALS, Events, make_config, poll, submit_update

from veil.deploy import Coordinator
from veil.deploy.coordinator import SERVICE
from veil.deploy.proto import federation_pb2 as pb
from veil.ledger import Ledger


def reserves(tmp_path: Path) -> list[Any]:
    ledger = Ledger(str(tmp_path / "ledger.sqlite"))
    try:
        return [e for e in ledger.history("hospitals/client") if e.kind == "reserve"]
    finally:
        ledger.close()


def test_no_round_starts_and_nothing_is_charged_below_min_clients(
    tmp_path: Path, events: Events
) -> None:
    """min_clients = 2 and only one agent connects: the coordinator keeps waiting (and says
    so) long after start_seconds; no round starts and the ledger holds no reservation."""
    co = Coordinator(make_config(tmp_path), insecure=True, port=0)
    co.start()
    ch, stream = poll(co, "hospital-a", wait=30.0)
    try:
        events.wait_for(
            lambda seen: (
                sum(
                    e["event"] == "waiting_for_clients" and e["connected"] == ["hospital-a"]
                    for e in seen
                )
                >= 3
            )
        )
        assert co.status()["round"] == 0
        assert not events.named("round_started")
        assert reserves(tmp_path) == []
    finally:
        stream.cancel()
        ch.close()
        co.stop(grace=0.1)
    assert co.error is None


def run_agents(co: Coordinator, data_files: Path, names: tuple[str, ...]) -> list[Any]:
    """Honest agents in threads; each one's Agent or the exception it raised."""
    import numpy as np

    from veil.deploy import Agent

    outcomes: list[Any] = [RuntimeError("not run")] * len(names)

    def one(i: int) -> None:
        with np.load(data_files / f"{names[i]}.npz") as npz:
            x, y = npz["x"], npz["y"]
        agent = Agent(f"127.0.0.1:{co.port}", x=x, y=y, name=names[i], retry_seconds=5.0)
        try:
            agent.run()
            outcomes[i] = agent
        except BaseException as exc:
            outcomes[i] = exc

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(names))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    return outcomes


class FakeClient:
    """hospital-a (client 1: its shares are the first used to rebuild a secret), driven by
    hand through one secure round; ``corrupt`` spoils its message of one stage (advertise,
    share or unmask). Records the status each call ended with."""

    def __init__(self, co: Coordinator, corrupt: str) -> None:
        self.co = co
        self.corrupt = corrupt
        self.codes: dict[str, grpc.StatusCode | None] = {}
        self.thread = threading.Thread(target=self._run)

    def _call(self, ch: grpc.Channel, method: str, message: Any, reply: Any) -> Any:
        call = ch.unary_unary(f"/{SERVICE}/{method}")
        try:
            raw = call(
                message.SerializeToString(),
                timeout=120,
                metadata=(("veil-client", "hospital-a"),),
            )
        except grpc.RpcError as exc:
            self.codes[method] = exc.code()
            return None
        self.codes[method] = None
        return reply.FromString(raw)

    def _run(self) -> None:
        import numpy as np

        from veil.deploy import codec
        from veil.federated.messages import TrainInstruction, TrainResult
        from veil.federated.secure import SecureClient
        from veil.privacy.random import SecureRandom
        from veil.secagg.protocol import AdvertiseKeys, UnmaskShares

        ch, stream = poll(self.co, "hospital-a", wait=60.0)
        with ch:
            chunks = [pb.Chunk.FromString(c) for c in stream]
            header = chunks[0].task
            model = np.frombuffer(b"".join(c.data for c in chunks[1:]), dtype=header.dtype)
            spec = codec.spec_from_pb(header.secure)
            instruction = TrainInstruction(
                header.round, "hospital-a", model, codec.config_from_pb(header.config), spec
            )
            client = SecureClient(instruction, rng=SecureRandom())
            keys = client.advertise()
            if self.corrupt == "advertise":  # the all-zero point has order 1
                keys = AdvertiseKeys(keys.client, bytes(32), keys.share_key)
            number = header.round
            directory = self._call(
                ch, "Advertise", codec.advertise_to_pb(number, keys), pb.KeyDirectory
            )
            if directory is None:
                return
            shares = client.share_keys(codec.directory_from_pb(directory))
            if self.corrupt == "share":  # leaves out one of its peers
                shares = dataclasses.replace(shares, sealed=dict(list(shares.sealed.items())[1:]))
            routed = self._call(
                ch, "Share", codec.share_keys_to_pb(number, shares), pb.SharesForYou
            )
            if routed is None:
                return
            zero = TrainResult(number, "hospital-a", np.zeros_like(model), 1, {})
            masked = client.masked_input(codec.shares_for_you_from_pb(routed), zero)
            head = pb.Chunk(
                header=pb.ChunkHeader(
                    round=number, dtype="uint32", length=masked.vector.size, client=masked.client
                )
            )
            submit = ch.stream_unary(f"/{SERVICE}/SubmitMasked")
            raw = submit(
                (m.SerializeToString() for m in codec.chunks(head, masked.vector)),
                timeout=120,
                metadata=(("veil-client", "hospital-a"),),
            )
            answer = client.unmask(codec.request_from_pb(pb.UnmaskRequest.FromString(raw)))
            if self.corrupt == "unmask":
                answer = UnmaskShares(
                    answer.client,
                    {v: (s + 1) for v, s in answer.seed_shares.items()},
                    dict(answer.key_shares),
                )
            self._call(ch, "Unmask", codec.unmask_to_pb(number, answer), pb.RoundDone)


@pytest.mark.parametrize("corrupt", ["advertise", "share", "unmask"])
def test_one_bad_client_is_dropped_and_the_secure_round_completes(
    tmp_path: Path, four_data_files: Path, events: Events, corrupt: str
) -> None:
    """Four hospitals under SecAgg (threshold 3); hospital-a spoils one message: a low-order
    X25519 key, key shares that leave out a peer, or wrong unmasking shares. Each would make
    the honest clients refuse the round or the unmasking fail; instead hospital-a is dropped
    (logged with the reason) and the round aggregates the others."""
    from deploy_support import FOUR

    config = make_config(
        tmp_path,
        clients=FOUR,
        rounds=1,
        min_clients=4,
        dp="none",
        secure="secagg",
        secure_dropout=0.34,
    )
    co = Coordinator(config, insecure=True, port=0)
    co.start()
    fake = FakeClient(co, corrupt)
    try:
        fake.thread.start()
        outcomes = run_agents(co, four_data_files, FOUR[1:])
        assert co.wait(60)
        fake.thread.join(60)
    finally:
        co.stop(grace=0.1)
    assert co.error is None
    for outcome in outcomes:
        assert not isinstance(outcome, BaseException), outcome
        assert outcome.report.rounds == [1]
    (closed,) = co.status()["history"]
    assert closed["aggregated"] is True
    dropped = [e for e in events.named("client_dropped") if e["client"] == "hospital-a"]
    assert [e["stage"] for e in dropped] == [corrupt]
    if corrupt == "unmask":  # its input is in the sum; only its shares were left out
        assert closed["completed"] == 4
        assert fake.codes["Unmask"] is None
    else:
        assert closed["completed"] == 3
        assert closed["dropped"] == ["hospital-a"]
        method = {"advertise": "Advertise", "share": "Share"}[corrupt]
        assert fake.codes[method] is grpc.StatusCode.ABORTED


def test_parallel_long_polls_cannot_starve_other_calls(tmp_path: Path) -> None:
    """hospital-a opens 40 long polls at once (twice the thread pool); each newer one ends the
    older (or, above the per-client limit, is refused at once), so a status call of another
    hospital is still answered and a single poll remains."""
    co = Coordinator(make_config(tmp_path, min_clients=3), insecure=True, port=0)
    co.start()
    calls = [poll(co, "hospital-a", wait=60.0) for _ in range(40)]
    try:
        with grpc.insecure_channel(f"127.0.0.1:{co.port}") as ch:
            status = ch.unary_unary(f"/{SERVICE}/Status")
            raw = status(
                pb.StatusRequest().SerializeToString(),
                timeout=30,
                metadata=(("veil-client", "hospital-b"),),
            )
        assert json.loads(pb.StatusReply.FromString(raw).json)["round"] == 0
        # The polls reach the coordinator in any order: read every stream at once and wait
        # until all but one have ended (the one that came last stays open for its 60 s),
        # without assuming which.
        ended: list[Any] = []

        def first_answer(stream: Any) -> None:
            try:
                ended.append(pb.Chunk.FromString(next(iter(stream))).task.kind)
            except grpc.RpcError as exc:
                ended.append(exc.code())

        for _, stream in calls:
            threading.Thread(target=first_answer, args=(stream,), daemon=True).start()
        deadline = time.monotonic() + 30
        while len(ended) < len(calls) - 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(ended) == len(calls) - 1
        assert set(co._polls) == {"hospital-a"}
        assert set(ended) <= {pb.TASK_WAIT, grpc.StatusCode.RESOURCE_EXHAUSTED}
    finally:
        for ch, stream in calls:
            stream.cancel()
            ch.close()
        co.stop(grace=0.1)


def test_the_caller_is_checked_before_its_payload_is_read(tmp_path: Path) -> None:
    """A stranger's malformed stage message is refused for who sent it, not for its bytes."""
    co = Coordinator(make_config(tmp_path, secure="secagg"), insecure=True, port=0)
    co.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{co.port}") as ch:
            for method in ("Join", "NextTask", "Advertise", "Share", "Unmask", "Status"):
                if method == "NextTask":
                    call: Any = lambda data, **kw: next(  # noqa: E731
                        iter(ch.unary_stream(f"/{SERVICE}/NextTask")(data, **kw))
                    )
                else:
                    call = ch.unary_unary(f"/{SERVICE}/{method}")
                with pytest.raises(grpc.RpcError) as err:
                    call(b"\xff\xff garbage", timeout=10, metadata=(("veil-client", "intruder"),))
                assert err.value.code() is grpc.StatusCode.PERMISSION_DENIED, method
    finally:
        co.stop(grace=0.1)


def test_a_seeded_coordinator_does_not_replay_its_noise_after_a_restart(tmp_path: Path) -> None:
    """Each round's randomness comes from (seed, round): a restarted coordinator resuming at
    round 3 draws round 3's words, not round 1's again. Without a seed it is the secure
    generator."""
    seeded = make_config(tmp_path, seed=7)
    first = Coordinator(seeded, insecure=True, port=0)
    try:
        words = {r: first.round_rng(r).words(8).tolist() for r in (1, 2, 3)}
    finally:
        first.stop(grace=0.1)
    again = Coordinator(seeded, insecure=True, port=0)  # a restart: the same derivation
    try:
        assert again.round_rng(3).words(8).tolist() == words[3]
    finally:
        again.stop(grace=0.1)
    assert len({tuple(w) for w in words.values()}) == 3  # no round repeats another's
    assert not first.round_rng(1).is_secure
    unseeded = Coordinator(make_config(tmp_path), insecure=True, port=0)
    try:
        assert unseeded.round_rng(1).is_secure
    finally:
        unseeded.stop(grace=0.1)


def test_a_plain_update_reports_bounded_counts_and_metrics(tmp_path: Path) -> None:
    """Example counts above federation.max_examples and metrics that are not finite, too
    large or too many are refused before the update reaches the round; a well-formed update
    outside a round is refused only for that."""
    config = make_config(tmp_path, dp="none", max_examples=1000, min_clients=3)
    co = Coordinator(config, insecure=True, port=0)
    co.start()
    try:
        for examples, metrics, says in (
            (1001, {}, "at most 1000"),
            (10, {"train_loss": float("nan")}, "finite"),
            (10, {"train_loss": 1e300}, "finite"),
            (10, {f"m{i}": 0.0 for i in range(9)}, "8 metrics"),
        ):
            code, details = submit_update(
                co, "hospital-a", round=1, examples=examples, metrics=metrics
            )
            assert code is grpc.StatusCode.INVALID_ARGUMENT
            assert says in details
        code, _ = submit_update(co, "hospital-a", round=1, examples=1000, metrics={"a": 1.0})
        assert code is grpc.StatusCode.FAILED_PRECONDITION  # no round is running
    finally:
        co.stop(grace=0.1)


def test_under_dp_the_clients_metrics_are_not_released(tmp_path: Path) -> None:
    """Central DP noises the model, not the clients' training loss: the round's record (which
    `veil fl status` shows every hospital) leaves the metrics out."""
    co = Coordinator(make_config(tmp_path, rounds=1, min_clients=1), insecure=True, port=0)
    co.start()
    ch, stream = poll(co, "hospital-a", wait=30.0)
    try:
        with ch:
            header = pb.Chunk.FromString(next(iter(stream))).task
            reply = submit_update(
                co, "hospital-a", round=header.round, examples=10, metrics={"train_loss": 0.5}
            )
        assert isinstance(reply, bytes)
        assert co.wait(60)
    finally:
        co.stop(grace=0.1)
    (closed,) = co.status()["history"]
    assert closed["completed"] == 1
    assert closed["metrics"] == {}


def test_a_client_that_answers_at_once_is_never_early(
    tmp_path: Path, data_files: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each stage opens in the same step that answers the previous one: even when the driver
    is slow to get to the next stage (here held up a second before each), the agents' replies
    to the directory, the shares and the unmask request are taken, not refused as early."""
    slow = Coordinator._collect

    def late(self: Coordinator, current: Any, stage: str, expected: set[str]) -> Any:
        if stage not in ("advertise", "update"):
            time.sleep(1.0)
        return slow(self, current, stage, expected)

    monkeypatch.setattr(Coordinator, "_collect", late)
    config = make_config(
        tmp_path, rounds=1, min_clients=3, dp="none", secure="secagg", secure_dropout=0.34
    )
    co = Coordinator(config, insecure=True, port=0)
    co.start()
    try:
        outcomes = run_agents(co, data_files, HOSPITALS)
        assert co.wait(60)
    finally:
        co.stop(grace=0.1)
    assert [o.report.rounds for o in outcomes] == [[1]] * 3
    (closed,) = co.status()["history"]
    assert closed["completed"] == 3
