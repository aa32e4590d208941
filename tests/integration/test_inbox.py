"""The inbox with real files and a real watchdog observer."""

from __future__ import annotations

import collections
import contextlib
import errno
import hashlib
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sentinel_daemon.core.jobspec import JobSpecError
from sentinel_daemon.daemon.inbox import Inbox, InboxFileGone
from sentinel_daemon.errors import InboxError
from sentinel_daemon.layout import REASON_SUFFIX, is_job_name
from sentinel_daemon.settings import InboxSettings
from sentinel_daemon.tools.submit import submit_file
from tests.helpers import wait_for

#: Long enough that nothing in a test is reported by a listing or by settling unless the
#: test asks for it: a report within a test's deadline then came from a watchdog event.
NEVER = 3600.0


class Recorder:
    """An ``on_file`` that records what it was given, when, on which thread, and the bytes."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls: list[tuple[str, float, str, bytes | None]] = []

    def __call__(self, path: Path) -> None:
        try:
            data: bytes | None = path.read_bytes()
        except OSError:
            data = None
        with self.lock:
            self.calls.append((path.name, time.monotonic(), threading.current_thread().name, data))

    def names(self) -> list[str]:
        with self.lock:
            return [c[0] for c in self.calls]

    def counts(self) -> collections.Counter[str]:
        return collections.Counter(self.names())

    def time_of(self, name: str) -> float | None:
        with self.lock:
            return next((c[1] for c in self.calls if c[0] == name), None)


class Dirs:
    def __init__(self, base: Path) -> None:
        self.inbox = base / "inbox"
        self.claimed = base / "claimed"
        self.rejected = base / "rejected"
        self.outside = base / "elsewhere"
        self.outside.mkdir(parents=True)


@pytest.fixture
def dirs(tmp_path: Path) -> Dirs:
    return Dirs(tmp_path)


@contextlib.contextmanager
def running(dirs: Dirs, recorder: Recorder, **kwargs: Any) -> Iterator[Inbox]:
    kwargs.setdefault("rescan_interval", NEVER)
    kwargs.setdefault("settle", NEVER)
    inbox = Inbox(dirs.inbox, dirs.claimed, dirs.rejected, on_file=recorder, **kwargs)
    inbox.start()
    try:
        yield inbox
    finally:
        inbox.stop()


def rename_in(dirs: Dirs, name: str, data: bytes = b"name: job\n") -> Path:
    """What a careful writer does: write a dot-file in the inbox, then rename it."""
    tmp = dirs.inbox / f".{name}.tmp"
    tmp.write_bytes(data)
    final = dirs.inbox / name
    os.rename(tmp, final)
    return final


def listed_once(inbox: Inbox) -> None:
    """Wait for the listing the inbox makes when it starts."""
    wait_for(lambda: inbox.rescans >= 1, timeout=10, what="the start-up listing")


def settle_rescans(inbox: Inbox, n: int = 2) -> None:
    """Wait until ``n`` more full listings have run (and so settled everything due)."""
    target = inbox.rescans + n
    wait_for(lambda: inbox.rescans >= target, timeout=10, what=f"{n} more rescans")


# ---- noticing files -------------------------------------------------------------------


def test_a_file_renamed_into_the_inbox_is_reported_by_watchdog(dirs: Dirs) -> None:
    recorder = Recorder()
    with running(dirs, recorder) as inbox:
        assert inbox.watching
        listed_once(inbox)  # from here on only watchdog events report files
        started = time.monotonic()
        rename_in(dirs, "job.yaml")
        wait_for(lambda: recorder.time_of("job.yaml"), timeout=10, what="job.yaml reported")
        latency = (recorder.time_of("job.yaml") or 0.0) - started
        print(f"\ninbox pickup latency (rename within the inbox): {latency * 1000:.1f} ms")

        started = time.monotonic()
        (dirs.outside / "other.json").write_bytes(b"{}")
        os.rename(dirs.outside / "other.json", dirs.inbox / "other.json")
        wait_for(lambda: recorder.time_of("other.json"), timeout=10, what="other.json reported")
        latency = (recorder.time_of("other.json") or 0.0) - started
        print(f"inbox pickup latency (rename from another folder): {latency * 1000:.1f} ms")
    assert recorder.names() == ["job.yaml", "other.json"]
    assert {c[2] for c in recorder.calls} == {"sentinel-inbox"}


def test_a_file_written_in_place_is_reported_once_its_writer_closes_it(dirs: Dirs) -> None:
    recorder = Recorder()
    with running(dirs, recorder) as inbox:
        listed_once(inbox)
        with open(dirs.inbox / "direct.yml", "wb") as fh:
            fh.write(b"name: direct\n")
            fh.flush()
            fh.write(b"data: {transactions: a.csv}\n")
        wait_for(lambda: recorder.names(), timeout=10, what="direct.yml reported")
    assert recorder.calls[0][0] == "direct.yml"
    assert recorder.calls[0][3] == b"name: direct\ndata: {transactions: a.csv}\n"


def test_a_file_known_only_from_a_listing_is_reported_once_it_settles(dirs: Dirs) -> None:
    dirs.inbox.mkdir()
    (dirs.inbox / "early.yaml").write_bytes(b"x")  # there before the inbox started
    recorder = Recorder()
    with running(dirs, recorder, rescan_interval=0.05, settle=0.1):
        wait_for(lambda: recorder.names() == ["early.yaml"], timeout=10, what="early.yaml")


def test_dot_files_other_extensions_and_folders_are_ignored(dirs: Dirs) -> None:
    recorder = Recorder()
    with running(dirs, recorder, rescan_interval=0.05, settle=0.0) as inbox:
        (dirs.inbox / ".hidden.yaml").write_bytes(b"x")
        rename_in(dirs, ".renamed.json")
        (dirs.inbox / "notes.txt").write_bytes(b"x")
        (dirs.inbox / "job.yaml.tmp").write_bytes(b"x")
        (dirs.inbox / "job.yaml.reason").write_bytes(b"x")
        (dirs.inbox / "folder.yaml").mkdir()
        rename_in(dirs, "real.yaml")
        wait_for(lambda: "real.yaml" in recorder.names(), timeout=10, what="real.yaml")
        settle_rescans(inbox, 3)
    assert recorder.names() == ["real.yaml"]


def test_a_burst_of_500_files_is_reported_exactly_once_each(dirs: Dirs) -> None:
    recorder = Recorder()
    names = {f"job-{i:03d}.json" for i in range(500)}
    # A short rescan interval makes listings race with watchdog events throughout.
    with running(dirs, recorder, rescan_interval=0.1, settle=0.05) as inbox:
        started = time.monotonic()
        for name in sorted(names):
            rename_in(dirs, name, b"{}")
        wait_for(lambda: set(recorder.names()) >= names, timeout=15, what="all 500 reported")
        elapsed = time.monotonic() - started
        settle_rescans(inbox, 3)
    counts = recorder.counts()
    assert set(counts) == names
    assert max(counts.values()) == 1, [n for n, c in counts.items() if c > 1][:5]
    print(f"\n500 files renamed in and reported in {elapsed:.2f} s")


def test_listing_alone_finds_every_file_when_events_are_lost(dirs: Dirs) -> None:
    recorder = Recorder()
    names = {f"lost-{i:02d}.yaml" for i in range(60)}
    with running(dirs, recorder, rescan_interval=0.05, settle=0.05, watch=False) as inbox:
        assert not inbox.watching
        for name in sorted(names):
            rename_in(dirs, name)
        wait_for(lambda: set(recorder.names()) >= names, timeout=10, what="all found by listing")
        settle_rescans(inbox, 3)
    assert recorder.counts() == dict.fromkeys(names, 1)


def test_a_file_that_changes_in_place_is_reported_again(dirs: Dirs) -> None:
    recorder = Recorder()
    with running(dirs, recorder, rescan_interval=0.05, settle=0.05, watch=False) as inbox:
        path = rename_in(dirs, "job.yaml", b"first")
        wait_for(lambda: recorder.names() == ["job.yaml"], timeout=10, what="first report")
        settle_rescans(inbox)
        assert recorder.names() == ["job.yaml"]  # unchanged: not reported twice
        path.write_bytes(b"second, longer")
        wait_for(lambda: len(recorder.names()) == 2, timeout=10, what="second report")
    assert [c[3] for c in recorder.calls] == [b"first", b"second, longer"]


def test_a_failing_callback_does_not_stop_the_inbox(dirs: Dirs) -> None:
    seen: list[str] = []

    def flaky(path: Path) -> None:
        seen.append(path.name)
        if path.name == "bad.yaml":
            raise RuntimeError("boom")

    inbox = Inbox(
        dirs.inbox, dirs.claimed, dirs.rejected, rescan_interval=NEVER, on_file=flaky, settle=NEVER
    )
    with inbox:
        rename_in(dirs, "bad.yaml")
        wait_for(lambda: "bad.yaml" in seen, timeout=10, what="bad.yaml")
        rename_in(dirs, "good.yaml")
        wait_for(lambda: "good.yaml" in seen, timeout=10, what="good.yaml after a failure")


def test_an_inbox_whose_watch_cannot_start_falls_back_to_listing(
    dirs: Dirs, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_more_inotify() -> None:
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr("sentinel_daemon.daemon.inbox._make_observer", no_more_inotify)
    recorder = Recorder()
    with running(dirs, recorder, rescan_interval=0.05, settle=0.05) as inbox:
        assert not inbox.watching
        rename_in(dirs, "job.yaml")
        wait_for(lambda: recorder.names() == ["job.yaml"], timeout=10, what="found by listing")


def test_start_twice_is_refused_and_stop_twice_is_harmless(dirs: Dirs) -> None:
    inbox = Inbox(
        dirs.inbox, dirs.claimed, dirs.rejected, rescan_interval=NEVER, on_file=Recorder()
    )
    inbox.start()
    try:
        with pytest.raises(RuntimeError):
            inbox.start()
    finally:
        inbox.stop()
    inbox.stop()


# ---- claim and reject -----------------------------------------------------------------


def test_claim_moves_the_file_and_a_second_claim_says_it_is_gone(dirs: Dirs) -> None:
    recorder = Recorder()
    with running(dirs, recorder) as inbox:
        path = rename_in(dirs, "job.yaml", b"one")
        wait_for(lambda: recorder.names(), timeout=10, what="job.yaml reported")
        claimed = inbox.claim(path)
        assert claimed == dirs.claimed / "job.yaml"
        assert claimed.read_bytes() == b"one" and not path.exists()
        with pytest.raises(InboxFileGone) as info:
            inbox.claim(path)
        assert info.value.path == path
        # The same name again is a new file: reported, and claimed beside the first.
        rename_in(dirs, "job.yaml", b"two")
        wait_for(lambda: len(recorder.names()) == 2, timeout=10, what="second job.yaml")
        second = inbox.claim(path)
    assert second == dirs.claimed / "job.1.yaml"
    assert claimed.read_bytes() == b"one" and second.read_bytes() == b"two"


def test_claim_refuses_a_path_outside_the_inbox(dirs: Dirs) -> None:
    inbox = Inbox(dirs.inbox, dirs.claimed, dirs.rejected, rescan_interval=1, on_file=Recorder())
    (dirs.outside / "x.yaml").write_bytes(b"x")
    with pytest.raises(ValueError):
        inbox.claim(dirs.outside / "x.yaml")


def test_reject_moves_the_file_aside_with_its_reason(dirs: Dirs) -> None:
    inbox = Inbox(dirs.inbox, dirs.claimed, dirs.rejected, rescan_interval=1, on_file=Recorder())
    rejected = []
    for content in (b"first", b"second"):
        path = rename_in(dirs, "bad.json", content)
        claimed = inbox.claim(path)
        rejected.append(inbox.reject(claimed, f"field 'name': bad ({content.decode()})"))
    assert rejected == [dirs.rejected / "bad.json", dirs.rejected / "bad.1.json"]
    assert [p.read_bytes() for p in rejected] == [b"first", b"second"]
    reasons = [(p.parent / (p.name + REASON_SUFFIX)).read_text() for p in rejected]
    assert reasons == ["field 'name': bad (first)\n", "field 'name': bad (second)\n"]
    assert sorted(os.listdir(dirs.claimed)) == []
    assert not [n for n in os.listdir(dirs.rejected) if n.startswith(".")]  # no temp files
    with pytest.raises(InboxFileGone):
        inbox.reject(claimed, "again")


def test_reject_does_not_reuse_a_name_whose_reason_file_is_left_over(dirs: Dirs) -> None:
    inbox = Inbox(dirs.inbox, dirs.claimed, dirs.rejected, rescan_interval=1, on_file=Recorder())
    (dirs.rejected / ("job.yaml" + REASON_SUFFIX)).write_text("an older reason\n")
    claimed = inbox.claim(rename_in(dirs, "job.yaml"))
    assert inbox.reject(claimed, "new") == dirs.rejected / "job.1.yaml"
    assert (dirs.rejected / ("job.yaml" + REASON_SUFFIX)).read_text() == "an older reason\n"


# ---- submit ---------------------------------------------------------------------------


def test_submit_file_never_shows_a_partial_file_under_its_final_name(
    dirs: Dirs, tmp_path: Path
) -> None:
    src = tmp_path / "job.yaml"
    payload = b"name: job\n" + b"# padding\n" * 6000  # 60 kB: several writes' worth
    src.write_bytes(payload)
    recorder = Recorder()
    partial: list[tuple[str, int]] = []
    stop = threading.Event()

    def watch_sizes() -> None:
        # Looks at final names as often as it can while submits run.
        while not stop.is_set():
            for entry in os.scandir(dirs.inbox):
                if is_job_name(entry.name):
                    with contextlib.suppress(FileNotFoundError):
                        size = entry.stat(follow_symlinks=False).st_size
                        if size != len(payload):
                            partial.append((entry.name, size))

    with running(dirs, recorder, settle=0.05) as inbox:
        watcher = threading.Thread(target=watch_sizes)
        watcher.start()
        try:
            placed = [submit_file(src, inbox.inbox_dir) for _ in range(20)]
        finally:
            stop.set()
            watcher.join()
        wait_for(lambda: len(recorder.names()) == 20, timeout=10, what="20 submissions")
    assert placed[0] == dirs.inbox / "job.yaml" and placed[1] == dirs.inbox / "job.1.yaml"
    assert len(set(placed)) == 20
    assert partial == []
    assert sorted(recorder.names()) == sorted(p.name for p in placed)
    assert all(c[3] == payload for c in recorder.calls)
    assert sorted(os.listdir(dirs.inbox)) == sorted(p.name for p in placed)  # no temp left


def test_submit_file_refuses_a_file_changed_since_validation(dirs: Dirs, tmp_path: Path) -> None:
    dirs.inbox.mkdir()
    src = tmp_path / "job.yaml"
    src.write_bytes(b"name: job\n")
    validated = hashlib.sha256(src.read_bytes()).hexdigest()
    src.write_bytes(b"name: other\n")
    with pytest.raises(InboxError, match="changed"):
        submit_file(src, dirs.inbox, expected_sha256=validated)
    src.write_bytes(b"name: job\n")
    placed = submit_file(src, dirs.inbox, expected_sha256=validated)
    assert placed.read_bytes() == b"name: job\n"
    assert os.listdir(dirs.inbox) == ["job.yaml"]


def test_submit_file_refuses_links_and_oversized_files(dirs: Dirs, tmp_path: Path) -> None:
    dirs.inbox.mkdir()
    (tmp_path / "big.yaml").write_bytes(b"#" * 70_000)
    (tmp_path / "link.yaml").symlink_to(tmp_path / "big.yaml")
    for name in ("big.yaml", "link.yaml"):
        with pytest.raises(JobSpecError):
            submit_file(tmp_path / name, dirs.inbox)
    assert os.listdir(dirs.inbox) == []


def test_submit_file_refuses_names_the_inbox_would_ignore(dirs: Dirs, tmp_path: Path) -> None:
    dirs.inbox.mkdir()
    for name in ("job.txt", ".job.yaml"):
        (tmp_path / name).write_bytes(b"x")
        with pytest.raises(InboxError):
            submit_file(tmp_path / name, dirs.inbox)
    assert os.listdir(dirs.inbox) == []


def test_inbox_settings_have_the_documented_defaults() -> None:
    settings = InboxSettings()
    assert (settings.rescan_seconds, settings.max_job_bytes, settings.settle_seconds) == (
        5.0,
        65536,
        0.5,
    )


def test_a_claim_does_not_hold_back_the_next_file_behind_a_lone_move_event(dirs: Dirs) -> None:
    # A claim used to rename the file out of the watched inbox; watchdog holds such a lone
    # IN_MOVED_FROM for 0.5 s, and every later event waited behind it.
    recorder = Recorder()
    with running(dirs, recorder) as inbox:
        first = rename_in(dirs, "first.yaml")
        wait_for(lambda: recorder.names() == ["first.yaml"], timeout=10, what="the first file")
        inbox.claim(first)
        sent = time.monotonic()
        rename_in(dirs, "second.yaml")
        wait_for(lambda: recorder.time_of("second.yaml"), timeout=10, what="the second file")
        took = (recorder.time_of("second.yaml") or 0.0) - sent
    assert took < 0.4, f"the second file was reported {took:.3f} s after its rename"
    assert (dirs.claimed / "first.yaml").read_bytes() == b"name: job\n"
    assert not first.exists()


def test_twin_names_left_by_a_crash_mid_claim_are_dropped_from_the_inbox(dirs: Dirs) -> None:
    inbox = Inbox(
        dirs.inbox, dirs.claimed, dirs.rejected, rescan_interval=NEVER, on_file=Recorder()
    )
    twin = rename_in(dirs, "job.yaml")
    os.link(twin, dirs.claimed / "job.yaml")  # the claim's link happened, its unlink did not
    other = rename_in(dirs, "other.yaml")
    assert inbox.drop_claimed_twins() == [twin]
    assert not twin.exists() and other.exists()
    assert (dirs.claimed / "job.yaml").exists()
