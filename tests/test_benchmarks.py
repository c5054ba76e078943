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
