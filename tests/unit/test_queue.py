"""The queue directory protocol, on real files in a temporary folder, in one process."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from sentinel_daemon.queue.maildir import BadFile, Outbox, PutOutcome, Queue
from sentinel_daemon.queue.messages import (
    TRACEBACK_CHARS,
    Failed,
    Progress,
    Pruned,
    ReplayFilter,
    Saved,
    TrialCommand,
    TrialData,
    split_command_id,
)
from sentinel_daemon.settings import QueueSettings

SHA = "ab" * 32


def command(trial: int, attempt: int = 1, job_id: str = "fraud-1") -> TrialCommand:
    return TrialCommand(
        job_id=job_id,
        trial=trial,
        attempt=attempt,
        model="xgboost",
        params={"max_depth": 6, "learning_rate": 0.1},
        data=TrialData(
            transactions=Path("/srv/data/train_transaction.csv"),
            identity=None,
            cache_dir=Path("/var/lib/sentinel/cache"),
            test_fraction=0.2,
            valid_fraction=0.2,
        ),
        artifact_dir=f"models/{job_id}",
        report_every=10,
    )


@pytest.fixture
def bad() -> list[BadFile]:
    return []


@pytest.fixture
def queue(tmp_path: Path, bad: list[BadFile]) -> Queue:
    return Queue(tmp_path / "queue", on_bad=bad.append)


def saved(outbox: Outbox, command_id: str) -> Saved:
    return outbox.send(
        Saved,
        command_id,
        artifact=f"models/{command_id}.ubj",
        sha256=SHA,
        metrics={"auc": 0.91},
        value=0.91,
        train_seconds=1.5,
        duration_s=2.0,
    )


def test_a_command_travels_put_claim_post_results_ack_finish(queue: Queue) -> None:
    cmd = command(0)
    assert queue.put(cmd) is PutOutcome.QUEUED
    assert queue.in_flight() == {"fraud-1.0.1": None}

    claimed = queue.claim("w1")
    assert claimed is not None and claimed.command == cmd and claimed.worker_id == "w1"
    assert claimed.path == queue.root / "workers" / "w1" / "fraud-1.0.1.json"
    assert queue.in_flight() == {"fraud-1.0.1": "w1"}

    outbox = Outbox(queue, "w1")
    outbox.send(Progress, cmd.command_id, step=10, value=0.8)
    sent = saved(outbox, cmd.command_id)
    results = queue.results()
    assert [m.kind for _, m in results] == ["progress", "saved"]
    assert [m.msg_seq for _, m in results] == [1, 2]
    assert results[1][1] == sent
    assert results[1][0].name == "w1.000000000002.saved.json"

    for path, _ in results:
        queue.ack(path)
    assert queue.results() == []
    assert queue.finish("w1", cmd.command_id) is True
    assert queue.in_flight() == {}
    assert queue.claim("w1") is None


def test_put_of_a_pending_or_claimed_command_is_a_no_op(queue: Queue) -> None:
    assert queue.put(command(1)) is PutOutcome.QUEUED
    assert queue.put(command(1)) is PutOutcome.ALREADY_PENDING
    assert queue.claim("w1") is not None
    assert queue.put(command(1)) is PutOutcome.ALREADY_CLAIMED
    assert queue.claim("w2") is None  # nothing was queued twice
    assert queue.put(command(1, attempt=2)) is PutOutcome.QUEUED  # a retry is a new command


def test_claims_take_the_oldest_pending_command_first(queue: Queue) -> None:
    # Names sort differently from put order ("10" < "9"), and puts land in one clock tick.
    for trial in (9, 10, 2, 30):
        queue.put(command(trial))
    order = []
    while (claimed := queue.claim("w1")) is not None:
        order.append(claimed.command.trial)
    assert order == [9, 10, 2, 30]


def test_a_second_claim_gets_the_next_command_not_the_same(queue: Queue) -> None:
    queue.put(command(1))
    queue.put(command(2))
    first, second = queue.claim("w1"), queue.claim("w2")
    assert first is not None and second is not None
    assert (first.command.trial, second.command.trial) == (1, 2)
    assert queue.claim("w3") is None
    assert queue.in_flight() == {"fraud-1.1.1": "w1", "fraud-1.2.1": "w2"}


def test_take_back_moves_a_lost_workers_commands_to_dead_and_returns_them(queue: Queue) -> None:
    for trial in (1, 2, 3):
        queue.put(command(trial))
    queue.claim("lost")
    queue.claim("lost")
    queue.claim("alive")
    queue.beat("lost", {"command_id": "fraud-1.2.1", "counter": 7})
    assert queue.request_prune("lost", "fraud-1.1.1")

    taken = queue.take_back("lost")
    assert [c.trial for c in taken] == [1, 2]
    assert queue.in_flight() == {"fraud-1.3.1": "alive"}
    assert sorted(p.name for p in queue.dead.iterdir()) == [
        "fraud-1.1.1.lost.json",
        "fraud-1.2.1.lost.json",
    ]
    assert not queue.should_prune("lost", "fraud-1.1.1")
    assert queue.last_beat("lost") is not None  # kept as the last sign of life
    assert queue.take_back("lost") == []

    # The same attempt taken back twice keeps both records.
    queue.put(command(1))
    queue.claim("lost")
    assert [c.trial for c in queue.take_back("lost")] == [1]
    assert len(list(queue.dead.glob("fraud-1.1.1.lost.json*"))) == 2


def test_take_back_with_stop_leaves_a_running_worker_a_prune_request_for_each(
    queue: Queue,
) -> None:
    for trial in (1, 2):
        queue.put(command(trial))
    queue.claim("external")
    queue.claim("other")
    assert [c.trial for c in queue.take_back("external", stop=True)] == [1]
    assert queue.should_prune("external", "fraud-1.1.1")  # it stops at its next report
    assert not queue.should_prune("other", "fraud-1.2.1")
    assert queue.finish("external", "fraud-1.1.1") is False  # gone; the request goes too
    assert not queue.should_prune("external", "fraud-1.1.1")


def _reason(moved_to: Path) -> str:
    return moved_to.with_name(moved_to.name + ".reason").read_text()


def test_malformed_pending_commands_are_moved_aside_with_a_reason(
    queue: Queue, bad: list[BadFile]
) -> None:
    (queue.pending / "junk.1.1.json").write_bytes(b"{not json")
    (queue.pending / "x.1.1.json").write_bytes(b'{"job_id": "x"}')
    other = command(5).model_dump_json().encode()
    (queue.pending / "fraud-1.4.1.json").write_bytes(other)  # holds a different command
    (queue.pending / "notes.txt").write_bytes(b"hello")
    queue.put(command(7))

    claimed = queue.claim("w1")
    assert claimed is not None and claimed.command.trial == 7
    assert sorted(b.original.name for b in bad) == [
        "fraud-1.4.1.json",
        "junk.1.1.json",
        "notes.txt",
        "x.1.1.json",
    ]
    by_name = {b.original.name: b for b in bad}
    assert "json" in _reason(by_name["junk.1.1.json"].moved_to).lower()
    assert "trial" in _reason(by_name["x.1.1.json"].moved_to)
    assert "fraud-1.5.1" in _reason(by_name["fraud-1.4.1.json"].moved_to)
    assert by_name["notes.txt"].moved_to == queue.bad / "pending.notes.txt"
    assert list(queue.pending.iterdir()) == []
    assert queue.in_flight() == {"fraud-1.7.1": "w1"}


def test_malformed_results_are_moved_aside_and_good_ones_still_returned(
    queue: Queue, bad: list[BadFile]
) -> None:
    outbox = Outbox(queue, "w1")
    good = saved(outbox, "fraud-1.0.1")
    (queue.results_dir / "w1.000000000009.saved.json").write_bytes(b"\x00garbage")
    wrong_seq = good.model_copy(update={"msg_seq": 3}).model_dump_json()
    (queue.results_dir / "w1.000000000004.saved.json").write_text(wrong_seq)
    (queue.results_dir / "w1.000000000005.exploded.json").write_text('{"kind": "exploded"}')
    (queue.results_dir / "stray.txt").write_text("?")

    results = queue.results()
    assert [m for _, m in results] == [good]
    reasons = {b.original.name: b.reason for b in bad}
    assert set(reasons) == {
        "w1.000000000009.saved.json",
        "w1.000000000004.saved.json",
        "w1.000000000005.exploded.json",
        "stray.txt",
    }
    assert "does not match" in reasons["w1.000000000004.saved.json"]
    assert all(_reason(b.moved_to).strip() == b.reason for b in bad)
    assert sorted(p.name for p in queue.results_dir.iterdir()) == ["w1.000000000001.saved.json"]


def test_progress_is_posted_without_fsync_and_every_other_message_with_it(
    queue: Queue, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Progress only feeds the pruner in memory: its two fsyncs were pure cost."""
    synced: list[int] = []
    real_fsync = os.fsync

    def counting(fd: int) -> None:
        synced.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", counting)
    outbox = Outbox(queue, "w1")
    outbox.next_seq()  # reserve the block of numbers first (a durable write of its own)
    synced.clear()
    outbox.send(Progress, "fraud-1.0.1", step=10, value=0.8)
    assert synced == []
    saved(outbox, "fraud-1.0.1")
    assert len(synced) == 2  # the file, then the results folder
    assert [m.kind for _, m in queue.results()] == ["progress", "saved"]


def test_an_empty_progress_file_is_dropped_quietly_but_an_empty_result_is_kept_aside(
    queue: Queue, bad: list[BadFile]
) -> None:
    """What a power cut can leave of a progress file posted without fsync: not an incident."""
    outbox = Outbox(queue, "w1")
    outbox.send(Progress, "fraud-1.0.1", step=10, value=0.8)
    good = saved(outbox, "fraud-1.0.1")
    (queue.results_dir / "w1.000000000001.progress.json").write_bytes(b"")
    (queue.results_dir / "w1.000000000007.saved.json").write_bytes(b"")
    assert [m for _, m in queue.results()] == [good]
    assert [b.original.name for b in bad] == ["w1.000000000007.saved.json"]
    assert sorted(p.name for p in queue.results_dir.iterdir()) == ["w1.000000000002.saved.json"]


def test_results_come_back_by_worker_then_seq_and_ack_is_idempotent(queue: Queue) -> None:
    a, b = Outbox(queue, "a"), Outbox(queue, "b")
    for step in range(3):
        b.send(Progress, "j.1.1", step=step, value=0.5)
        a.send(Progress, "j.2.1", step=step, value=0.5)
    results = queue.results()
    assert [(m.worker_id, m.msg_seq) for _, m in results] == [
        ("a", 1), ("a", 2), ("a", 3), ("b", 1), ("b", 2), ("b", 3)
    ]  # fmt: skip
    path = results[0][0]
    queue.ack(path)
    queue.ack(path)  # a crash between ack and the next ingest: harmless
    with pytest.raises(ValueError, match="not a result file"):
        queue.ack(queue.pending / path.name)


def test_msg_seq_keeps_rising_when_a_worker_restarts_under_the_same_id(queue: Queue) -> None:
    first = Outbox(queue, "w1")
    seqs = [first.send(Pruned, "j.1.1", step=s).msg_seq for s in range(3)]
    for path, _ in queue.results():
        queue.ack(path)
    again = Outbox(queue, "w1")  # the old numbers are gone from results/ now
    later = again.send(Failed, "j.1.2", error="boom").msg_seq
    assert seqs == [1, 2, 3] and later > 3

    replay = ReplayFilter()
    messages = [m for _, m in queue.results()]
    assert [replay.fresh(m) for m in messages + messages] == [True, False]


def test_heartbeats_report_their_age_and_info(queue: Queue) -> None:
    assert queue.last_beat("w1") is None
    queue.beat("w1", {"command_id": None, "counter": 1})
    beat = queue.last_beat("w1")
    assert beat is not None
    age, info = beat
    assert 0 <= age < 5
    assert info == {"pid": os.getpid(), "command_id": None, "counter": 1}

    heartbeat = queue.root / "workers" / "w1" / "heartbeat.json"
    old = time.time() - 30
    os.utime(heartbeat, (old, old))
    aged = queue.last_beat("w1")
    assert aged is not None and aged[0] >= 30

    queue.beat("w1", {"command_id": "j.1.1", "counter": 2})
    fresh = queue.last_beat("w1")
    assert fresh is not None and fresh[0] < 5 and fresh[1]["counter"] == 2
    heartbeat.write_bytes(b"")  # what a power loss can leave
    damaged = queue.last_beat("w1")
    assert damaged is not None and damaged[0] < 5 and damaged[1] == {}


def test_a_prune_request_is_seen_by_should_prune_until_finish(queue: Queue) -> None:
    queue.put(command(1))
    claimed = queue.claim("w1")
    assert claimed is not None
    cid = claimed.command.command_id
    assert not queue.should_prune("w1", cid)
    assert not queue.request_prune("w2", cid)  # w2 does not hold it: nothing to do
    assert queue.request_prune("w1", cid)
    assert queue.should_prune("w1", cid)
    assert not queue.should_prune("w1", "fraud-1.2.1")
    queue.finish("w1", cid)
    assert not queue.should_prune("w1", cid)
    assert queue.finish("w1", cid) is False


def test_recover_removes_stale_tmp_leftovers_but_not_writes_in_progress(queue: Queue) -> None:
    stale, fresh = queue.tmp / "fraud-1.1.1.json", queue.tmp / "w1.000000000001.saved.json"
    stale.write_bytes(b'{"half": ')
    fresh.write_bytes(b'{"half": ')
    old = time.time() - 3600
    os.utime(stale, (old, old))
    assert queue.recover() == [stale]
    assert not stale.exists() and fresh.exists()
    assert queue.recover(older_than_s=0) == [fresh]


def test_a_file_in_tmp_is_never_visible_as_pending(queue: Queue) -> None:
    (queue.tmp / "fraud-1.1.1.json").write_bytes(command(1).model_dump_json().encode())
    assert queue.claim("w1") is None
    assert queue.in_flight() == {}
    assert queue.put(command(1)) is PutOutcome.QUEUED  # the leftover is not "already pending"
    assert list(queue.tmp.iterdir()) == []


def test_command_ids_round_trip_and_are_checked_when_read_back() -> None:
    cmd = command(12, attempt=3, job_id="ieee.v2")
    assert cmd.command_id == "ieee.v2.12.3"
    assert split_command_id(cmd.command_id) == ("ieee.v2", 12, 3)
    data = cmd.model_dump(mode="json")
    assert TrialCommand.model_validate(data) == cmd
    with pytest.raises(ValidationError, match="does not match"):
        TrialCommand.model_validate({**data, "command_id": "ieee.v2.12.4"})
    with pytest.raises(ValueError, match="not a command id"):
        split_command_id("no-dots")


def test_messages_refuse_what_json_or_the_folder_layout_cannot_carry(queue: Queue) -> None:
    with pytest.raises(ValidationError):
        Progress(worker_id="w1", msg_seq=1, command_id="j.1.1", step=1, value=float("nan"))
    with pytest.raises(ValidationError):
        command(1).model_copy(update={}).model_validate(
            {**command(1).model_dump(), "artifact_dir": "../../etc"}
        )
    with pytest.raises(ValueError, match="worker id"):
        queue.claim("../w1")
    with pytest.raises(ValueError, match="posted as"):
        queue.post("w2", Pruned(worker_id="w1", msg_seq=1, command_id="j.1.1", step=0))
    long = Failed(worker_id="w1", msg_seq=1, command_id="j.1.1", error="x", traceback="t" * 9999)
    assert len(long.traceback) == TRACEBACK_CHARS + 3 and long.traceback.startswith("...")


def test_settings_reject_unknown_keys() -> None:
    assert QueueSettings().poll_interval_s > 0
    with pytest.raises(ValidationError):
        QueueSettings.model_validate({"poll_interval": 1})


def test_daemon_calls_about_a_worker_that_never_ran_change_nothing(queue: Queue) -> None:
    assert queue.take_back("ghost") == []
    assert queue.last_beat("ghost") is None
    assert queue.finish("ghost", "j.1.1") is False
    assert not queue.request_prune("ghost", "j.1.1")
    assert not queue.should_prune("ghost", "j.1.1")
    assert list(queue.workers.iterdir()) == []
