"""The ensemble's definition in one object, and the ensemble file that carries it.

Weights given to an ensemble are the weights used everywhere (a served member's own weight
included); a file is refused when damaged, foreign, newer, or when a model is missing or has
other weights; loading a file gives the same scores as the same members and weights by hand.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from testkit import tiny
from testkit.scripted_server import ScriptedServer
from unite_logits import Ensemble, LoadedModel, RemoteMember
from unite_logits.ensemble.spec import (
    EnsembleFile,
    EnsembleFileError,
    EnsembleSpec,
    read_ensemble_file,
    write_ensemble_file,
)
from unite_logits.models.catalogue import get_entry


def test_the_spec_checks_its_settings_once_and_normalises_equal_weights():
    assert EnsembleSpec(["a", "b"], [1, 1]).weights is None
    assert EnsembleSpec(["a", "b"], [1, 0.5]).weights == (1.0, 0.5)
    assert EnsembleSpec(["a", "b"], [1, 0]).taking_part == ["a"]
    assert EnsembleSpec(["a", "b"], [0, 1]).taking_part == ["a", "b"]  # the primary always writes the tokens
    for bad, message in [
        ({"models": []}, "at least one model"),
        ({"models": ["a"], "weights": [1, 2]}, "got 2 weights for 1 models"),
        ({"models": ["a", "b"], "weights": [0, 0]}, "all zero"),
        ({"models": ["a"], "weights": [float("nan")]}, "finite non-negative"),
        ({"models": ["a"], "top_k": 0}, "`top_k` has to be a positive integer, but is 0"),
        ({"models": ["a"], "combine": "max"}, "`combine` has to be one of mean"),
        ({"models": ["a"], "confidence_gate": 1.5}, r"`confidence_gate` has to be None or a probability in \(0, 1\]"),
    ]:
        with pytest.raises(ValueError, match=message):
            EnsembleSpec(**bad)
    spec = EnsembleSpec(["a", "b"], [1, 0.25], top_k=5, confidence_gate=0.9)
    assert EnsembleSpec.from_dict(spec.to_dict()) == spec
    assert spec.settings() == {"weights": [1.0, 0.25], "top_k": 5, "confidence_gate": 0.9}
    assert EnsembleSpec(["a"]).settings() == {"weights": None, "top_k": 10}  # what older run identities hold
    with pytest.raises(ValueError, match="unknown ensemble setting"):
        EnsembleSpec.from_dict({"models": ["a"], "temperature": 1})


# -- the weights given are the weights used --------------------------------------------------
def test_a_served_members_own_weight_gives_way_to_the_ensembles():
    tok = tiny.byte_bpe()
    primary = LoadedModel(tiny.tiny_llama(tok, seed=0), tok, "primary")
    with ScriptedServer(tiny.sp_bpe()) as server:
        member = RemoteMember(server.url, server.tokenizer, name="served", weight=3.0, timeout=5.0)
        ensemble = Ensemble([primary, member], weights=[1.0, 0.25])
        assert ensemble.weights == [1.0, 0.25] and ensemble.models[1].weight == 0.25
        with ensemble.processor() as processor:
            assert processor.weights == [1.0, 0.25]
        member.close()


def test_unequal_weights_change_scores_exactly_as_the_rule_says():
    """Scoring through `Ensemble` with weights [1, w] equals the core's rule with those weights,
    and differs from equal weights (a weight handed to the wrong model would show)."""
    from unite_logits.core.scoring import ScoreRequest, ScoringModel, score_requests
    from unite_logits.core.token_bytes import token_bytes_view

    tok_a, tok_b, tok_c = tiny.byte_bpe(), tiny.sp_bpe(), tiny.unigram()
    models = [LoadedModel(tiny.tiny_llama(tok_a, seed=0), tok_a, "a"), LoadedModel(tiny.tiny_llama(tok_b, seed=1), tok_b, "b"),
              LoadedModel(tiny.tiny_gpt2(tok_c, seed=2), tok_c, "c")]
    request = ScoreRequest(tok_a("The quick brown fox")["input_ids"], tok_a(" jumps over")["input_ids"])
    results = {}
    for weights in ([1.0, 1.0, 1.0], [1.0, 0.25, 0.75], [1.0, 0.75, 0.25]):
        (via_ensemble,) = Ensemble(models, weights=weights, top_k=4).scorer().score([request])
        core = [ScoringModel(m.model, token_bytes_view(m.tokenizer, m.eos_token_ids), w, m.name)
                for m, w in zip(models, weights)]
        (direct,) = score_requests(core[0], core[1:], [request], top_k=4)
        assert via_ensemble.logprobs == pytest.approx(direct.logprobs, abs=1e-9)
        results[tuple(weights)] = via_ensemble.logprobs
    assert len({tuple(round(v, 6) for v in r) for r in results.values()}) == 3  # each weighting scores differently


# -- the file --------------------------------------------------------------------------------
def _write(tmp_path, content):
    path = tmp_path / "ensemble.json"
    path.write_text(json.dumps(content))
    return path


def test_a_written_file_reads_back_and_names_its_tuning(tmp_path):
    spec = EnsembleSpec(["smollm2-135m-instruct", "gemma3-270m"], [1, 0.5])
    digests = {name: get_entry(name).sha256 for name in spec.models}
    path = write_ensemble_file(tmp_path / "ensemble.json", EnsembleFile(spec, digests, tuned={"task": "arc_easy"}))
    content = read_ensemble_file(path, check_models=False)
    assert content.spec == spec and content.tuned == {"task": "arc_easy"} and content.digests == digests
    assert json.loads(path.read_text())["version"] == 1


@pytest.mark.parametrize("content, message", [
    ("not json", "is damaged"),
    ({"format": "something else"}, "is not an ensemble file"),
    ({"format": "unite-logits ensemble", "version": 99, "ensemble": {"models": ["x"]}}, "newer than this unite-logits"),
    ({"format": "unite-logits ensemble", "version": 1, "ensemble": {"models": ["x"], "top_k": -1}},
     "`top_k` has to be a positive integer"),
    ({"format": "unite-logits ensemble", "version": 1, "ensemble": {"models": ["no-such-model"]}}, "cannot be loaded here"),
    ({"format": "unite-logits ensemble", "version": 1, "ensemble": {"models": ["x"]}, "decoding": {"speculative": "yes"}},
     "`decoding.speculative` has to be true or false"),
    ({"format": "unite-logits ensemble", "version": 1, "ensemble": {"models": ["x"]}, "decoding": {"num_draft_tokens": 99}},
     "`decoding.num_draft_tokens` has to be at most 32"),
])
def test_a_damaged_or_foreign_file_is_refused_in_one_line(tmp_path, content, message):
    path = tmp_path / "ensemble.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(EnsembleFileError, match=message) as caught:
        read_ensemble_file(path)
    assert "\n" not in str(caught.value)


def test_a_file_for_other_weights_is_refused_before_loading(tmp_path):
    """A folder model whose weights changed since the file was written."""
    tok = tiny.byte_bpe()
    folder = tmp_path / "model"
    tiny.tiny_llama(tok, seed=0).save_pretrained(folder)
    tok.save_pretrained(folder)
    spec = EnsembleSpec([str(folder)])
    from unite_logits.models.sources import folder_digest

    path = write_ensemble_file(tmp_path / "ensemble.json", EnsembleFile(spec, {str(folder): folder_digest(folder)}))
    assert read_ensemble_file(path).spec == spec
    tiny.tiny_llama(tok, seed=1).save_pretrained(folder)  # other weights, same place
    with pytest.raises(EnsembleFileError, match="written for other weights"):
        read_ensemble_file(path)
    with pytest.raises(EnsembleFileError, match="does not exist"):
        read_ensemble_file(tmp_path / "missing.json")


def test_loading_a_file_gives_the_scores_of_the_same_members_and_weights_by_hand(tmp_path):
    tok_a, tok_b = tiny.byte_bpe(), tiny.sp_bpe()
    folders = []
    for name, tok, model in (("a", tok_a, tiny.tiny_llama(tok_a, seed=0)), ("b", tok_b, tiny.tiny_llama(tok_b, seed=1))):
        folder = tmp_path / name
        model.save_pretrained(folder)
        tok.save_pretrained(folder)
        folders.append(str(folder))
    spec = EnsembleSpec(folders, [1.0, 0.3], top_k=4)
    path = write_ensemble_file(tmp_path / "ensemble.json", EnsembleFile(spec))
    from_file = Ensemble.from_file(path)
    by_hand = Ensemble.load(folders, weights=[1.0, 0.3], top_k=4)
    pairs = [("The quick brown fox", " jumps"), ("Hello", " world")]
    assert [s.logprobs for s in from_file.score(pairs)] == [s.logprobs for s in by_hand.score(pairs)]
    assert from_file.spec == by_hand.spec
    assert torch.equal(from_file.primary.model.lm_head.weight, by_hand.primary.model.lm_head.weight)


def test_the_command_lines_ensemble_file_answers_as_the_same_flags_by_hand(tmp_path, capsys):
    """``generate --ensemble FILE`` is the ensemble of the file's models, weights, top-k and
    decoding defaults; the same models with other weights in their folders are refused in one line."""
    from testkit.tiny_ensemble import save_tiny_pair
    from unite_logits.apps import cli
    from unite_logits.models.sources import folder_digest

    primary, aux = save_tiny_pair(tmp_path)
    spec = EnsembleSpec([primary, aux], [1.0, 0.3], top_k=4)
    path = write_ensemble_file(tmp_path / "ensemble.json", EnsembleFile(
        spec, {name: folder_digest(Path(name)) for name in spec.models},
        decoding={"max_new_tokens": 6, "speculative": True, "num_draft_tokens": 3}))

    def generate(*flags):
        code = cli.main(["generate", "The quick brown fox", "--raw", "--json", *flags])
        out, err = capsys.readouterr()
        assert code == 0, err
        return json.loads(out)

    from_file = generate("--ensemble", str(path))
    by_hand = generate("--primary", primary, "--aux", aux, "--weights", "1,0.3", "--top-k", "4", "--max-new-tokens", "6")
    assert from_file["text"] == by_hand["text"] and from_file["new_tokens"] == 6  # the file's max_new_tokens
    assert {k: from_file[k] for k in ("models", "weights", "top_k")} == {"models": [primary, aux], "weights": [1.0, 0.3],
                                                                         "top_k": 4}
    assert from_file["speculation"]["drafted"] > 0  # decoded by draft-and-verify, as the file says
    tiny.tiny_llama(tiny.sp_bpe(), seed=5).save_pretrained(aux)  # other weights, same folder
    capsys.readouterr()  # the saving's progress bar
    code = cli.main(["generate", "The quick brown fox", "--ensemble", str(path)])
    err = capsys.readouterr().err
    assert code == cli.EXIT_USAGE and len(err.strip().splitlines()) == 1 and "written for other weights" in err, err
