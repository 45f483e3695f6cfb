"""What a user of the Prefect UI sees of a flow run, without a run: the run name is recipe + a short
hash of the config, and the benchmark tables' rows are rounded with their uncertainty. On real
(ephemeral API) flow runs: tests/integration/flows/test_flow_ui.py."""

from __future__ import annotations

# judge reports as the evaluation flow returns them (tests/integration/flows/test_flow_ui.py publishes
# the same ones as table artifacts)
ALPACA = {
    "win_rate": 52.34567,
    "standard_error": 1.23456,
    "discrete_win_rate": 51.0,
    "lc_win_rate": 48.8888,
    "lc_standard_error": 0.98765,
    "n_labelled": 805,
    "baseline": "gpt4_1106_preview",
}
ARENA = {"score": 33.3333, "ci_low": 30.1111, "ci_high": 36.6666, "n_questions": 500}


def test_flow_run_name_differs_with_the_config():
    from flows.reporting import run_name
    from sgpo.config import load_config

    a, b = load_config("tiny"), load_config("tiny", ["dpo.beta=0.2"])
    assert run_name(a) != run_name(b) and run_name(a) == run_name(load_config("tiny"))


def test_benchmark_rows_are_rounded_with_their_uncertainty():
    from flows.reporting import artifact_key, benchmark_rows

    rows = {r["metric"]: r for r in benchmark_rows(ALPACA)}
    assert list(rows) == ["win rate (%)", "discrete win rate (%)", "LC win rate (%)"]
    assert rows["win rate (%)"] == {
        "metric": "win rate (%)",
        "value": 52.35,
        "SE": 1.23,
        "CI 95% low": "",
        "CI 95% high": "",
        "n": 805,
    }
    assert rows["LC win rate (%)"]["value"] == 48.89 and rows["LC win rate (%)"]["SE"] == 0.99
    (arena,) = benchmark_rows(ARENA)
    assert (arena["value"], arena["CI 95% low"], arena["CI 95% high"], arena["SE"]) == (
        33.33,
        30.11,
        36.67,
        "",
    )
    assert benchmark_rows({"win_rate": None, "n": 3}) == []  # nothing judged: no table
    assert artifact_key("pairwise SGPO vs DPO") == "sgpo-bench-pairwise-sgpo-vs-dpo"
