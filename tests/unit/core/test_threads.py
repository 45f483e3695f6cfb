"""CPU threads of the processes sgpo starts (sgpo.core.threads): resolving `threads: auto | N`,
sharing them among launched ranks, and the wait policy."""

from __future__ import annotations

import pytest

from sgpo.core import threads as th


def test_auto_takes_the_environment_then_the_visible_cores(monkeypatch):
    monkeypatch.setattr(th, "visible_cpus", lambda: 6)
    assert th.resolve_threads("auto", {}) == 6
    assert th.resolve_threads("auto", {"OMP_NUM_THREADS": "3"}) == 3  # a scheduler's choice wins
    assert th.resolve_threads("auto", {"OMP_NUM_THREADS": "junk"}) == 6
    assert th.resolve_threads("auto", {"OMP_NUM_THREADS": "0"}) == 6
    assert th.resolve_threads(2, {"OMP_NUM_THREADS": "3"}) == 2  # an explicit N wins over it


@pytest.mark.parametrize("bad", [0, -1, True, 1.5, "two"])
def test_a_bad_setting_is_one_clear_error(bad):
    with pytest.raises(ValueError, match="threads must be 'auto' or a whole number"):
        th.resolve_threads(bad, {})


def test_ranks_share_the_threads_and_waiting_threads_sleep():
    one = th.thread_env(4, 1, environ={})
    assert one["OMP_NUM_THREADS"] == one["MKL_NUM_THREADS"] == one["SGPO_THREADS"] == "4"
    assert one["OMP_WAIT_POLICY"] == "PASSIVE"
    per_rank = th.thread_env(4, 2, environ={})
    assert per_rank["OMP_NUM_THREADS"] == "2"
    alone = th.thread_env(2, 4, environ={})  # never zero
    assert alone["OMP_NUM_THREADS"] == "1" and "OMP_WAIT_POLICY" not in alone
    mine = th.thread_env(4, 1, environ={"OMP_WAIT_POLICY": "ACTIVE"})  # the user's policy stays
    assert mine["OMP_WAIT_POLICY"] == "ACTIVE"


def test_visible_cores_are_bounded_by_a_cgroup_quota(tmp_path, monkeypatch):
    (tmp_path / "cpu.max").write_text("150000 100000\n")  # 1.5 CPUs of quota
    assert th._cgroup_cpu_limit(tmp_path) == 2
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert th._cgroup_cpu_limit(tmp_path) is None
    (tmp_path / "cpu.max").unlink()
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("100000\n")  # cgroup v1: one CPU
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert th._cgroup_cpu_limit(tmp_path) == 1
    monkeypatch.setattr(th, "_cgroup_cpu_limit", lambda: 1)
    assert th.visible_cpus() == 1


def test_a_run_remembers_its_total_for_what_it_launches(monkeypatch):
    assert th.run_threads({"SGPO_THREADS": "3", "OMP_NUM_THREADS": "1"}) == 3
    monkeypatch.setattr(th, "visible_cpus", lambda: 5)
    assert th.run_threads({}) == 5


def test_command_line_values():
    assert th.parse_threads("auto") == "auto" and th.parse_threads("3") == 3
    for bad in ("0", "x"):
        with pytest.raises(ValueError):
            th.parse_threads(bad)
