"""The inbox's decisions, from identities and listings alone: no files, no clock, no threads."""

from __future__ import annotations

from sentinel_daemon.daemon.inboxdiff import Identity, InboxDiff

A: Identity = (10, 100, 1_000)
A_GROWN: Identity = (10, 180, 2_000)  # the same inode, written to since
B: Identity = (11, 50, 1_000)
SETTLE = 0.5


def settle_all(diff: InboxDiff, current: dict[str, Identity], now: float) -> list[str]:
    """What the inbox does when a settle time passes: look up the due names, then decide."""
    due = diff.due(now)
    return diff.settled({n: i for n, i in current.items() if n in due}, now)


def test_a_file_known_to_be_whole_is_reported_at_once_and_only_once() -> None:
    diff = InboxDiff(SETTLE)
    assert diff.complete("job.yaml", A)
    assert not diff.complete("job.yaml", A)  # watchdog's moved then closed, say
    diff.listed({"job.yaml": A}, now=1.0)
    assert diff.next_due() is None  # a listing of the same file waits on nothing
    assert settle_all(diff, {"job.yaml": A}, now=9.0) == []


def test_a_file_seen_only_by_listing_is_reported_once_unchanged_for_the_settle_time() -> None:
    diff = InboxDiff(SETTLE)
    diff.listed({"b.yaml": B, "a.yaml": A}, now=1.0)
    assert diff.next_due() == 1.0 + SETTLE
    assert diff.due(1.4) == []
    assert settle_all(diff, {"a.yaml": A, "b.yaml": B}, now=1.4) == []
    assert settle_all(diff, {"a.yaml": A, "b.yaml": B}, now=1.5) == ["a.yaml", "b.yaml"]
    assert diff.next_due() is None


def test_a_candidate_seen_again_unchanged_keeps_its_first_time() -> None:
    diff = InboxDiff(SETTLE)
    diff.created("job.yaml", A, now=1.0)
    diff.created("job.yaml", A, now=1.3)  # the listing finds it too
    diff.listed({"job.yaml": A}, now=1.4)
    assert diff.next_due() == 1.0 + SETTLE


def test_a_candidate_that_changes_waits_again_from_when_the_change_was_seen() -> None:
    diff = InboxDiff(SETTLE)
    diff.created("job.yaml", A, now=1.0)
    assert settle_all(diff, {"job.yaml": A_GROWN}, now=1.6) == []  # still being written
    assert diff.next_due() == 1.6 + SETTLE
    assert settle_all(diff, {"job.yaml": A_GROWN}, now=2.0) == []
    assert settle_all(diff, {"job.yaml": A_GROWN}, now=2.1) == ["job.yaml"]


def test_a_candidate_changed_by_a_created_event_restarts_its_wait() -> None:
    diff = InboxDiff(SETTLE)
    diff.created("job.yaml", A, now=1.0)
    diff.created("job.yaml", A_GROWN, now=1.2)
    assert diff.next_due() == 1.2 + SETTLE


def test_a_candidate_gone_before_it_settles_is_forgotten_unreported() -> None:
    diff = InboxDiff(SETTLE)
    diff.created("job.yaml", A, now=1.0)
    assert settle_all(diff, {}, now=2.0) == []
    assert diff.next_due() is None


def test_a_candidate_that_is_reported_whole_meanwhile_is_not_reported_again() -> None:
    diff = InboxDiff(SETTLE)
    diff.created("job.yaml", A, now=1.0)
    assert diff.complete("job.yaml", A)  # its writer closed it
    assert diff.next_due() is None
    diff.created("job.yaml", A, now=1.1)  # a late created event for the same file
    assert diff.next_due() is None


def test_a_file_whole_event_for_a_vanished_file_drops_its_candidate() -> None:
    diff = InboxDiff(SETTLE)
    diff.created("job.yaml", A, now=1.0)
    assert not diff.complete("job.yaml", None)
    assert diff.next_due() is None


def test_a_file_changed_in_place_after_its_report_is_reported_again() -> None:
    diff = InboxDiff(SETTLE)
    assert diff.complete("job.yaml", A)
    diff.listed({"job.yaml": A_GROWN}, now=5.0)
    assert settle_all(diff, {"job.yaml": A_GROWN}, now=5.5) == ["job.yaml"]


def test_a_file_that_left_and_came_back_is_reported_again() -> None:
    diff = InboxDiff(SETTLE)
    assert diff.complete("job.yaml", A)
    diff.removed("job.yaml")
    assert diff.complete("job.yaml", A)


def test_a_listing_without_a_reported_file_forgets_it_when_its_event_was_lost() -> None:
    diff = InboxDiff(SETTLE)
    assert diff.complete("job.yaml", A)
    diff.listed({}, now=2.0)  # inotify dropped the deletion
    diff.listed({"job.yaml": A}, now=3.0)
    assert settle_all(diff, {"job.yaml": A}, now=3.5) == ["job.yaml"]


def test_a_claimed_name_takes_a_new_file_but_keeps_a_newer_candidate_waiting() -> None:
    diff = InboxDiff(SETTLE)
    assert diff.complete("job.yaml", A)
    diff.created("job.yaml", B, now=1.0)  # a new file under the name, arrived meanwhile
    diff.claimed("job.yaml")
    assert diff.next_due() == 1.0 + SETTLE
    assert settle_all(diff, {"job.yaml": B}, now=1.5) == ["job.yaml"]
    diff.claimed("job.yaml")
    assert diff.complete("job.yaml", A)  # the first file's identity, seen anew


def test_names_absent_from_a_listing_never_become_candidates() -> None:
    diff = InboxDiff(SETTLE)
    diff.created("folder.yaml", None, now=1.0)  # a folder, or gone before its lstat
    diff.listed({}, now=1.0)
    assert diff.next_due() is None and diff.due(100.0) == []
