"""The agreement analysis: buckets that account for every document, references that mean what they say."""

from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from unite_logits.evaluation.agreement import analyse


def record(scores: list[float], gold: int) -> dict[str, Any]:
    return {"output": scores, "target": str(gold), "metrics": {"acc": float(int(np.argmax(scores)) == gold)}}


finite = st.floats(-50, 0, allow_nan=False)


@st.composite
def runs(draw: Any) -> tuple[dict[str, dict[int, dict[str, Any]]], list[str]]:
    n_members = draw(st.integers(2, 3))
    n_docs = draw(st.integers(1, 25))
    n_choices = draw(st.integers(2, 4))
    names = [f"m{i}" for i in range(n_members)]
    golds = draw(st.lists(st.integers(0, n_choices - 1), min_size=n_docs, max_size=n_docs))
    records = {}
    for name in [*names, "ensemble"]:
        rows = draw(st.lists(st.lists(finite, min_size=n_choices, max_size=n_choices), min_size=n_docs, max_size=n_docs))
        records[name] = {doc: record(rows[doc], golds[doc]) for doc in range(n_docs)}
    return records, names


@settings(max_examples=60, deadline=None)
@given(runs())
def test_buckets_account_for_every_document_and_the_references_are_bounded(case):
    records, members = case
    best = max(members, key=lambda m: sum(r["metrics"]["acc"] for r in records[m].values()))
    agreement = analyse(records, members, "ensemble", best)
    assert agreement is not None
    n = len(records["ensemble"])
    assert sum(b.n for b in agreement.buckets) == n == agreement.n
    assert [b.members_right for b in agreement.buckets] == list(range(len(members) + 1))
    assert sum(b.ensemble_right for b in agreement.buckets) == sum(r["metrics"]["acc"] for r in records["ensemble"].values())
    assert all(0 <= b.ensemble_right <= b.n for b in agreement.buckets)
    assert sum(b.best_member_right for b in agreement.buckets) == sum(r["metrics"]["acc"] for r in records[best].values())
    assert agreement.buckets[0].best_member_right == 0 and agreement.buckets[-1].best_member_right == agreement.buckets[-1].n
    best_accuracy = sum(r["metrics"]["acc"] for r in records[best].values()) / n
    refs = {r.key: r for r in agreement.references}
    assert set(refs) == {"mean_probability", "sum_logprob", "oracle"}
    oracle = refs["oracle"]
    assert oracle.accuracy >= best_accuracy and oracle.versus_best.diff >= 0
    assert abs(oracle.accuracy - (1 - agreement.buckets[0].n / n)) < 1e-12
    for ref in refs.values():
        assert abs(ref.accuracy - best_accuracy - ref.versus_best.diff) < 1e-9
        assert ref.versus_best.low <= ref.versus_best.diff <= ref.versus_best.high


def test_members_that_agree_combine_to_themselves():
    scores = [[-1.0, -2.0, -3.0], [-5.0, -1.0, -2.0], [-2.0, -2.5, -0.5]]
    golds = [0, 2, 2]
    same = {doc: record(scores[doc], golds[doc]) for doc in range(3)}
    records = {"a": same, "b": same, "ensemble": same}
    agreement = analyse(records, ["a", "b"], "ensemble", "a")
    assert agreement is not None
    assert [(b.n, b.ensemble_right) for b in agreement.buckets] == [(1, 0), (0, 0), (2, 2)]
    assert all(r.accuracy == 2 / 3 for r in agreement.references)


def test_the_whole_answer_references_are_the_mean_and_the_product():
    # a leans to choice 0, b to choice 2, both give choice 1 a fair chance: the product of the
    # members' probabilities picks the compromise 1 (0.09 against 7e-7), their mean does not
    # (0.35 for 0 and 2 against 0.30).
    log = np.log
    a = {0: record(list(log([0.7, 0.3, 1e-6])), 1)}
    b = {0: record(list(log([1e-6, 0.3, 0.7])), 1)}
    agreement = analyse({"a": a, "b": b, "ensemble": b}, ["a", "b"], "ensemble", "b")
    assert agreement is not None
    accuracy = {r.key: r.accuracy for r in agreement.references}
    assert accuracy == {"sum_logprob": 1.0, "mean_probability": 0.0, "oracle": 0.0}
    assert [(b.n, b.ensemble_right) for b in agreement.buckets] == [(1, 0), (0, 0), (0, 0)]


def test_generative_or_one_member_runs_are_not_analysed():
    text = {0: {"output": "The answer is 4", "target": "4", "metrics": {"exact_match": 1.0}}}
    assert analyse({"a": text, "b": text, "ensemble": text}, ["a", "b"], "ensemble", "a") is None
    choice = {0: record([-1.0, -2.0], 0)}
    assert analyse({"a": choice, "ensemble": choice}, ["a"], "ensemble", "a") is None
    bad_gold = {0: {"output": [-1.0, -2.0], "target": "7", "metrics": {"acc": 0.0}}}
    assert analyse({"a": bad_gold, "b": choice, "ensemble": choice}, ["a", "b"], "ensemble", "a") is None
