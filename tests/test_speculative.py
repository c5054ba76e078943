"""Draft and verify (`unite_logits.speculative`) gives UniTE's own output.

Greedy: token for token the per-token path's output, for primaries and members of the three
tokenizer families, in batches whose rows keep drafts of different lengths, with EOS, stop
strings, ``max_new_tokens`` and ``min_new_tokens``. The equality tests run the tiny models in
float64: a forward pass over several tokens and one over a single token round differently
(different matmul shapes), and in float32 a near-tie between two candidates can flip with that
rounding (counted on the real pair in tests/test_real_speculative.py and docs/speculative.md);
float64 keeps the comparison about the mechanism. Sampling: the samples follow the ensemble's
distribution (a two-sample test against the per-token path, and the acceptance rule alone).
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import event, given, settings
from hypothesis import strategies as st
from scipy import stats as scipy_stats
from transformers import StopStringCriteria, StoppingCriteriaList

from testkit import tiny
from testkit.strategies import chunked, texts
from unite_logits import Member, UniTEProcessor, draft_and_verify
from unite_logits.core.member import LocalRunner
from unite_logits.core.member_rows import AuxiliaryRows
from unite_logits.core.sampling import accept_or_resample
from unite_logits.core.speculation import MAX_DRAFT_TOKENS, DraftSchedule, RoundCost, SpeculationStats
from unite_logits.core.sync import TokenSync
from unite_logits.core.token_bytes import token_bytes_view

FAMILIES = ("byte_bpe", "sp_bpe", "unigram")
PROMPTS = ["The quick brown fox", "Hello", "def add(a, b):", "Muffins and pancakes are", "naïve café 🙂", "42"]
STOPS = ["ab", " the", "c", "\n", "e"]


def _model(family: str, tokenizer, seed: int):
    if family == "byte_bpe":
        return tiny.tiny_llama(tokenizer, seed=seed)
    if family == "sp_bpe":
        return tiny.tiny_gemma3(tokenizer, seed=seed, sliding_window=6)
    return tiny.tiny_gpt2(tokenizer, seed=seed)


@pytest.fixture(scope="module")
def zoo():
    """Per tokenizer family: its tokenizer, a float64 model, and one whose EOS is likely."""
    out = {}
    for index, family in enumerate(FAMILIES):
        tokenizer = tiny.TOKENIZERS[family]()
        tokenizer.padding_side = "left"
        model = _model(family, tokenizer, seed=10 + index).double()
        eager = _model(family, tokenizer, seed=10 + index).double()
        with torch.no_grad():
            eager.get_output_embeddings().weight[tokenizer.eos_token_id] *= 6  # EOS wins now and then
        out[family] = (tokenizer, model, eager)
    return out


def _generate(model, tokenizer, prompts, processor, speculative, **options):
    enc = tokenizer(prompts, return_tensors="pt", padding=True)
    extra = {"custom_generate": draft_and_verify} if speculative else {}
    with processor:
        return model.generate(**enc, logits_processor=[processor], pad_token_id=tokenizer.pad_token_id,
                              do_sample=False, **options, **extra)


settings_spec = settings(max_examples=30)


@settings_spec
@given(
    primary=st.sampled_from(FAMILIES),
    eos_prone=st.booleans(),
    weights=st.lists(st.sampled_from([0.0, 0.1, 0.3, 1.0]), min_size=2, max_size=2),
    prompts=st.lists(st.sampled_from(PROMPTS), min_size=1, max_size=3),
    draft=st.integers(1, 6),
    schedule=st.sampled_from(["cost", "heuristic", "constant"]),
    max_new=st.integers(1, 16),
    min_new=st.integers(0, 10),
    stops=st.lists(st.sampled_from(STOPS), max_size=2, unique=True),
    concurrent=st.booleans(),
    top_k=st.integers(1, 6),
)
def test_greedy_draft_and_verify_equals_the_per_token_path(zoo, primary, eos_prone, weights, prompts, draft,
                                                           schedule, max_new, min_new, stops, concurrent, top_k):
    tokenizer, model, eager = zoo[primary]
    model = eager if eos_prone else model
    others = [family for family in FAMILIES if family != primary]
    members = [Member(zoo[f][1], zoo[f][0], weight=w, name=f) for f, w in zip(others, weights)]
    options = {"max_new_tokens": max_new, "min_new_tokens": min(min_new, max_new)}
    if stops:
        options["stopping_criteria"] = StoppingCriteriaList([StopStringCriteria(tokenizer, stops)])

    def processor():
        return UniTEProcessor(tokenizer, members, top_k=top_k, concurrent=concurrent, num_draft_tokens=draft,
                              draft_schedule=schedule)

    expected = _generate(model, tokenizer, prompts, processor(), False, **options)
    spec = processor()
    got = _generate(model, tokenizer, prompts, spec, True, **options)
    assert got.tolist() == expected.tolist()
    stats = spec.last_speculation
    assert stats is not None and stats.rounds >= 1  # the draft-and-verify loop ran, not the fallback
    new = expected.shape[1] - tokenizer(prompts, return_tensors="pt", padding=True)["input_ids"].shape[1]
    assert stats.emitted >= new  # every token of the longest row went through a decision
    event(f"rows ended early: {any(tokenizer.eos_token_id in row[-new:] for row in expected.tolist()) if new else False}")
    event(f"drafts kept: {stats.accepted > 0}; overruled: {stats.ensembled > stats.rounds}")


def test_rows_keep_drafts_of_different_lengths_and_match_the_per_token_path(zoo):
    """A member of small weight makes the rows disagree with the primary at different places."""
    tokenizer, model, _ = zoo["byte_bpe"]
    members = [Member(zoo["sp_bpe"][1], zoo["sp_bpe"][0], weight=0.3), Member(zoo["unigram"][1], zoo["unigram"][0], weight=0.3)]
    expected = _generate(model, tokenizer, PROMPTS, UniTEProcessor(tokenizer, members, top_k=5), False, max_new_tokens=24)
    spec = UniTEProcessor(tokenizer, members, top_k=5, num_draft_tokens=5, draft_schedule="constant")
    assert _generate(model, tokenizer, PROMPTS, spec, True, max_new_tokens=24).tolist() == expected.tolist()
    stats = spec.last_speculation
    assert 0 < stats.accepted < stats.drafted and stats.ensembled > 0  # drafts both kept and overruled


@settings(max_examples=10)
@given(prompts=st.lists(st.sampled_from(PROMPTS), min_size=2, max_size=4), draft=st.integers(1, 5))
def test_a_row_in_a_batch_is_the_row_alone(zoo, prompts, draft):
    tokenizer, model, eager = zoo["sp_bpe"]
    members = [Member(zoo["byte_bpe"][1], zoo["byte_bpe"][0], weight=0.5), Member(zoo["unigram"][1], zoo["unigram"][0])]

    def processor():
        return UniTEProcessor(tokenizer, members, top_k=4, num_draft_tokens=draft)

    batch = _generate(eager, tokenizer, prompts, processor(), True, max_new_tokens=12)
    width = batch.shape[1] - 12
    for row, prompt in enumerate(prompts):
        alone = _generate(eager, tokenizer, [prompt], processor(), True, max_new_tokens=12)[0].tolist()
        new = [t for t in batch[row, width:].tolist()]
        mine = alone[len(tokenizer(prompt)["input_ids"]):]
        assert new[: len(mine)] == mine and all(t == tokenizer.pad_token_id for t in new[len(mine):])


@pytest.mark.parametrize("name", ["sp_bpe", "unigram", "byte_bpe"])
@settings(max_examples=20)
@given(text=texts, cuts=st.lists(st.integers(0, 400), max_size=12), keeps=st.lists(st.integers(0, 8), max_size=12))
def test_a_read_gives_the_distribution_after_every_push(name, text, cuts, keeps):
    """A member reads several pushes in one pass (on branches where a reading leaves the trunk),
    keeps some of them (a rollback), and every distribution equals a fresh forward pass over the
    member's ids for that text; it abstains exactly where the text ends inside a character."""
    tokenizer = tiny.TOKENIZERS[name]()
    view = token_bytes_view(tokenizer)
    model = tiny.tiny_gemma3(tokenizer, seed=5, sliding_window=4).double()
    member = AuxiliaryRows(LocalRunner(model, view.size, "aux"), [TokenSync.from_text(view, "The quick")])
    shadow = TokenSync.from_text(view, "The quick")  # the same text, pushed without a cache
    pieces = chunked(text.encode("utf-8"), cuts)
    checked = 0
    while pieces:
        batch, pieces = pieces[:4], pieces[4:]
        states = [shadow.fork()]
        for piece in batch:
            shadow.push_token(0, piece)
            states.append(shadow.fork())
        values = member.read([[(0, piece) for piece in batch]])[0]
        for value, state in zip(values, states[1:]):
            assert (value is None) == (not state.ready)
            if value is not None:
                fresh = torch.log_softmax(model(input_ids=torch.tensor([state.ids])).logits[0, -1].float(), -1)
                torch.testing.assert_close(value, fresh, atol=1e-6, rtol=1e-6)
                checked += 1
        kept = keeps.pop(0) % (len(batch) + 1) if keeps else len(batch)
        member.keep(0, kept)
        shadow = states[kept]
        assert member.rows[0].sync.ids == shadow.ids and member.rows[0].sync.pending == shadow.pending
    member.refresh()
    if member.votes(0):
        fresh = torch.log_softmax(model(input_ids=torch.tensor([shadow.ids])).logits[0, -1].float(), -1)
        torch.testing.assert_close(member.logprobs[0], fresh, atol=1e-6, rtol=1e-6)


# -- sampling ---------------------------------------------------------------------------
@settings(max_examples=25)
@given(seed=st.integers(0, 10_000), vocab=st.integers(2, 6), with_draft=st.booleans())
def test_accept_or_resample_draws_from_the_target(seed, vocab, with_draft):
    generator = torch.Generator().manual_seed(seed)
    p = torch.rand(vocab, generator=generator) ** 3
    q = torch.rand(vocab, generator=generator) ** 3
    p, q = p / p.sum(), q / q.sum()
    n = 4000
    counts = torch.zeros(vocab)
    for _ in range(n):
        draft = int(torch.multinomial(p, 1, generator=generator)) if with_draft else None
        token, kept = accept_or_resample(draft, p, q, generator)
        assert not kept or token == draft
        counts[token] += 1
    expected = (q * n).clamp(min=1e-9)
    keep = expected > 5
    chi2 = float((((counts - expected) ** 2) / expected)[keep].sum())
    assert scipy_stats.chi2.sf(chi2, max(1, int(keep.sum()) - 1)) > 1e-4


def test_sampled_tokens_follow_the_ensemble_as_the_per_token_path_samples_them(zoo):
    """The first two sampled tokens: draft-and-verify against the per-token path, 300 draws each
    (seeded, so the test is repeatable), two-sample chi-square per token position."""
    tokenizer, model, _ = zoo["byte_bpe"]
    members = [Member(zoo["sp_bpe"][1], zoo["sp_bpe"][0], weight=0.5), Member(zoo["unigram"][1], zoo["unigram"][0], weight=0.5)]
    enc = tokenizer(["The quick brown fox"], return_tensors="pt")

    def draws(speculative: bool, n: int = 300) -> list[tuple[int, int]]:
        torch.manual_seed(1234 if speculative else 4321)
        out = []
        proc = UniTEProcessor(tokenizer, members, top_k=4, num_draft_tokens=2, concurrent=False)
        extra = {"custom_generate": draft_and_verify} if speculative else {}
        for _ in range(n):
            ids = model.generate(**enc, logits_processor=[proc], do_sample=True, temperature=1.5, top_k=0,
                                 max_new_tokens=2, min_new_tokens=2, pad_token_id=tokenizer.pad_token_id, **extra)
            out.append(tuple(ids[0, -2:].tolist()))
        if speculative:
            assert proc.last_speculation is not None and proc.last_speculation.rounds >= 1
        return out

    per_token, spec = draws(False), draws(True)
    for position in (0, 1):
        support = sorted({d[position] for d in per_token + spec})
        table = [[sum(d[position] == t for d in sample) for t in support] for sample in (per_token, spec)]
        columns = [c for c in range(len(support)) if table[0][c] + table[1][c] >= 10]
        rare = [sum(table[r][c] for c in range(len(support)) if c not in columns) for r in (0, 1)]
        observed = [[table[r][c] for c in columns] + ([rare[r]] if sum(rare) else []) for r in (0, 1)]
        _, p_value, _, _ = scipy_stats.chi2_contingency(observed)
        assert len(columns) >= 2  # the test has several likely tokens to compare
        assert p_value > 1e-3, (position, observed)


# -- the schedule and where the loop hands over ------------------------------------------
def test_draft_schedule_adapts_within_bounds():
    schedule = DraftSchedule(4, "heuristic")
    schedule.update(True)
    assert schedule.tokens == 6
    for _ in range(20):
        schedule.update(False)
    assert schedule.tokens == 1
    constant = DraftSchedule(3, "constant")
    constant.update(True)
    assert constant.tokens == 3
    with pytest.raises(ValueError, match="`num_draft_tokens` has to be a positive integer, but is 0"):
        DraftSchedule(0)
    with pytest.raises(ValueError, match="`draft_schedule` has to be one of 'cost', 'heuristic', 'constant'"):
        DraftSchedule(2, "fast")  # type: ignore[arg-type]


def _cost_schedule_after(rounds: int, kept_of_four: int, pass_seconds: float, verify_seconds: float) -> DraftSchedule:
    schedule = DraftSchedule(4)  # "cost" is the default
    for _ in range(rounds):
        schedule.update(kept_of_four == 4, RoundCost([(4, kept_of_four)], 5, 4, 4 * pass_seconds,
                                                     5 * pass_seconds + verify_seconds))
    return schedule


def test_cost_schedule_drafts_long_when_drafts_are_kept_and_passes_cheap_and_not_at_all_when_neither():
    assert DraftSchedule(4).tokens == 4  # nothing measured yet: the first round's length
    untimed = DraftSchedule(4)
    untimed.update(True)  # no times (sampling): as the heuristic schedule, so a seed gives one text
    assert untimed.tokens == 6
    assert _cost_schedule_after(10, 4, 0.001, 0.1).tokens >= 16  # kept, a pass 1 % of a verification
    assert _cost_schedule_after(10, 0, 0.06, 0.1).tokens == 0  # never kept: a per-token step is cheapest
    middle = _cost_schedule_after(10, 2, 0.06, 0.13)  # the real pair's times, about half the drafts kept
    assert 1 <= middle.tokens <= 4
    a, d, v = middle.acceptance, 0.06, 0.13
    expected = [((n + 1) * d + v) * (1 - a) / (1 - a ** (n + 1)) for n in range(MAX_DRAFT_TOKENS + 1)]
    assert middle.tokens == expected.index(min(expected))  # the rule, as documented


def test_a_round_teaches_the_schedule_at_every_judged_position_the_one_after_the_draft_included():
    from unite_logits.speculative import _DraftAndVerify, _Round

    def round_with(drafts: list[int], tops: list[int]) -> _Round:
        work = _Round([0], len(drafts) + 1)
        work.drafts = drafts
        work.scores = [torch.nn.functional.one_hot(torch.tensor(top), 10).float() for top in tops]
        return work

    judged = _DraftAndVerify._judged
    assert judged(round_with([3, 4], [3, 4, 5]), 2, 1, [3, 9]) == (2, 1)  # one kept, one turned down
    assert judged(round_with([3, 4], [3, 4, 5]), 3, 2, [3, 4, 5]) == (3, 3)  # kept whole; then the top token
    assert judged(round_with([3, 4], [3, 4, 5]), 3, 2, [3, 4, 7]) == (3, 2)  # kept whole; then another
    assert judged(round_with([], [5]), 1, 0, [5]) == (1, 1)  # no draft: the position still judges
    assert judged(round_with([3, 4], [3, 4, 5]), 1, 1, [3]) == (1, 1)  # stopped after the first draft


@settings(max_examples=40, deadline=None)
@given(rows=st.lists(st.tuples(st.integers(0, 32), st.integers(0, 32)), min_size=1, max_size=8),
       pass_seconds=st.floats(0, 1), verify_seconds=st.floats(0, 10), repeats=st.integers(1, 30))
def test_cost_schedule_stays_within_bounds_whatever_it_measures(rows, pass_seconds, verify_seconds, repeats):
    schedule = DraftSchedule(7)
    cost = RoundCost([(drafted, min(kept, drafted)) for drafted, kept in rows], 3, 2, 2 * pass_seconds,
                     3 * pass_seconds + verify_seconds)
    for _ in range(repeats):
        schedule.update(False, cost)
        assert 0 <= schedule.tokens <= MAX_DRAFT_TOKENS and 0 < schedule.acceptance < 1
    schedule.reset()
    assert schedule.tokens == 7 and schedule.acceptance == 0.5


def test_beam_search_and_scores_hand_over_to_the_per_token_path(zoo, caplog):
    tokenizer, model, _ = zoo["byte_bpe"]
    members = [Member(zoo["sp_bpe"][1], zoo["sp_bpe"][0])]
    enc = tokenizer(["The quick brown fox"], return_tensors="pt")
    for options in ({"num_beams": 3}, {"return_dict_in_generate": True, "output_scores": True}):
        runs = []
        for extra in ({}, {"custom_generate": draft_and_verify}):
            proc = UniTEProcessor(tokenizer, members, top_k=4)
            out = model.generate(**enc, logits_processor=[proc], do_sample=False, max_new_tokens=6,
                                 pad_token_id=tokenizer.pad_token_id, **options, **extra)
            runs.append((out.sequences if hasattr(out, "sequences") else out).tolist())
            if extra:
                assert proc.last_speculation is None
        assert runs[0] == runs[1]
    with caplog.at_level("INFO", logger="unite_logits.speculative"):
        proc = UniTEProcessor(tokenizer, members, top_k=4)
        model.generate(**enc, logits_processor=[proc], num_beams=2, max_new_tokens=2, custom_generate=draft_and_verify,
                       pad_token_id=tokenizer.pad_token_id)
    assert any("beam_search is decoded token by token" in m for m in caplog.messages)


def test_without_a_unite_processor_it_says_so(zoo):
    tokenizer, model, _ = zoo["byte_bpe"]
    with pytest.raises(ValueError, match="needs exactly one UniTEProcessor"):
        model.generate(**tokenizer(["x"], return_tensors="pt"), max_new_tokens=2, custom_generate=draft_and_verify)


# -- the confidence gate ------------------------------------------------------------------
def test_the_gate_is_the_same_rule_on_both_paths_and_goes_without_members_when_sure(zoo):
    tokenizer, model, _ = zoo["byte_bpe"]
    members = [Member(zoo["sp_bpe"][1], zoo["sp_bpe"][0]), Member(zoo["unigram"][1], zoo["unigram"][0])]
    primary_alone = _generate(model, tokenizer, PROMPTS[:3], UniTEProcessor(tokenizer, [], top_k=4), False,
                              max_new_tokens=10)
    exact = _generate(model, tokenizer, PROMPTS[:3], UniTEProcessor(tokenizer, members, top_k=4), False,
                      max_new_tokens=10)
    assert exact.tolist() != primary_alone.tolist()  # the members matter here
    for gate in (1e-9, 0.05, 1.0):
        outputs = []
        for speculative in (False, True):
            proc = UniTEProcessor(tokenizer, members, top_k=4, confidence_gate=gate)
            outputs.append(_generate(model, tokenizer, PROMPTS[:3], proc, speculative, max_new_tokens=10).tolist())
        assert outputs[0] == outputs[1]
        if gate == 1e-9:  # always sure: the primary alone
            assert outputs[0] == primary_alone.tolist() and proc.last_speculation.member_passes == 0
            assert proc.last_speculation.gated == proc.last_speculation.emitted
    with pytest.raises(ValueError, match=r"`confidence_gate` has to be None or a probability in \(0, 1\], but is 0"):
        UniTEProcessor(tokenizer, members, confidence_gate=0)


# -- what it did, per row ---------------------------------------------------------------------
@pytest.mark.parametrize("gate", [None, 0.005])
def test_each_rows_share_of_the_work_adds_up_to_the_batchs(zoo, gate):
    """`SpeculationStats.rows`: the rows' counts sum to the batch's, the batch ran as many rounds
    as its longest-running row, and each row emitted exactly its own new tokens."""
    tokenizer, _, eager = zoo["byte_bpe"]  # an EOS-prone primary: rows end at different rounds
    members = [Member(zoo["sp_bpe"][1], zoo["sp_bpe"][0]), Member(zoo["unigram"][1], zoo["unigram"][0])]
    proc = UniTEProcessor(tokenizer, members, top_k=4, confidence_gate=gate)
    out = _generate(eager, tokenizer, PROMPTS[:4], proc, True, max_new_tokens=12)
    batch = proc.last_speculation
    assert batch is not None and len(batch.rows) == 4 and not any(row.rows for row in batch.rows)
    for name in ("drafted", "accepted", "ensembled", "gated"):
        assert getattr(batch, name) == sum(getattr(row, name) for row in batch.rows), name
    assert batch.rounds == max(row.rounds for row in batch.rows)
    assert batch.member_passes == max(row.member_passes for row in batch.rows)
    width = tokenizer(PROMPTS[:4], return_tensors="pt", padding=True)["input_ids"].shape[1]
    for row, stats in zip(out[:, width:].tolist(), batch.rows):
        new = row.index(tokenizer.eos_token_id) + 1 if tokenizer.eos_token_id in row else len(row)
        assert stats.emitted == new and 1 <= stats.rounds <= new
    assert len({row.rounds for row in batch.rows}) > 1  # rows did end at different rounds
    assert (batch.gated > 0) == (gate is not None), batch
    together = SpeculationStats.of_rows(batch.rows)
    assert (together.drafted, together.accepted, together.rounds) == (batch.drafted, batch.accepted, batch.rounds)
