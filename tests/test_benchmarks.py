"""The serving benchmark runs end to end on the tiny suite (so it does not rot); no timings are asserted."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("openai")
pytest.importorskip("fastapi")


def test_serving_benchmark_batched_answers_equal_one_at_a_time(tmp_path, monkeypatch):
    from benchmarks import serving

    out = tmp_path / "serving.json"
    assert serving.main(["--suite", "tiny", "--clients", "1", "3", "--max-tokens", "4", "--repeats", "1",
                         "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert [row["clients"] for row in report["rows"]] == [1, 3]
    for row in report["rows"]:
        assert row["same_answers"] == row["clients"] and row["completion_tokens"] == 4 * row["clients"]
        assert set(row["wall_s"]) == set(serving.MODES) and all(s > 0 for s in row["wall_s"].values())


def test_union_coverage_counts_unproposed_tokens_by_side_and_position():
    from benchmarks.union_coverage import coverage
    from unite_logits.core.scoring import TokenScores

    def scores(logprobs, proposed):
        return TokenScores(logprobs, [False] * len(logprobs), proposed)

    # item 0 (gold 1): the gold answer wins; item 1 (gold 0): a distractor wins
    scored = [scores([-3.0, -1.0], [False, True]), scores([-1.0, -0.5, -0.1], [True, True, False]),
              scores([-4.0], [True]), scores([-1.0], [False])]
    report = coverage(scored, [1, 0], n_choices=2)
    assert report["accuracy"] == 0.5
    assert report["tokens"] == {"gold_first": 2, "gold_later": 2, "other_first": 2, "other_later": 1}
    assert report["unproposed_share"] == {"gold_first": 0.0, "gold_later": 0.5, "other_first": 1.0, "other_later": 0.0}
