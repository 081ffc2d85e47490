"""The crash harness of bench/crash.py, short: SIGKILL and SIGTERM under load lose nothing accepted."""

from __future__ import annotations

import signal

import pytest

from bench.crash import POSTGRES_INTEGRITY, STOP_DEADLINE_S, crash_test


@pytest.mark.parametrize(("sig", "trials"), [(signal.SIGKILL, 3), (signal.SIGTERM, 2)])
def test_no_accepted_task_is_lost_when_the_service_is_stopped_under_load(tmp_path, sig, trials):
    report = crash_test(tmp_path, trials, sig, seed=trials)

    assert report.trials == trials
    assert len(report.accepted) >= 20 * trials
    assert report.lost == []
    assert report.completed == len(report.accepted)
    assert report.listed_twice == 0
    assert report.integrity == "ok"
    if sig is signal.SIGTERM:
        assert report.exit_codes == {0: trials}
        assert report.slowest_stop_s < STOP_DEADLINE_S
        assert report.ran_again == 0, "a clean stop lets tasks in flight finish"


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_no_accepted_task_is_lost_when_a_distributed_instance_is_stopped_under_load(tmp_path, sig):
    report = crash_test(tmp_path, 2, sig, seed=7, distributed=True)

    assert len(report.accepted) >= 40
    assert report.lost == []
    assert report.completed == len(report.accepted)
    assert report.listed_twice == 0
    assert report.integrity == POSTGRES_INTEGRITY
    if sig is signal.SIGTERM:
        assert report.exit_codes == {0: 2}
        assert report.ran_again == 0, "a clean stop gives back what it claimed and did not start"
