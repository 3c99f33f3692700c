"""Prefix builders: exact lengths, determinism, no special tokens, the seed's definitions."""
from __future__ import annotations

import pytest
from helpers.dataset_fixtures import smollm2_tokenizer, tiny_tokenizer

from tracker.conditions import (  # noqa: E402
    CATALOGUE,
    INSTRUCTION_TEXTS,
    ConditionDefinition,
    build_prefix_ids,
    check_prompt_template,
    doc_keywords,
    encode,
    match_length,
    special_ids,
    surrogate_request,
)
from tracker.datasets import load_samples  # noqa: E402
from tracker.errors import SpecError, TrackerError  # noqa: E402
from workers.tokenizers import load_tokenizer  # noqa: E402

# Conditions whose prefix has exactly Q tokens (Q = the query's token count).
MATCHED = ["oracle", "random_tokens", "repeat_token", "scrambled_oracle", "unrelated_query",
           "extractor_matched", "universal_matched", "adversarial_matched", "adv_instruct_matched",
           "llm_extract", "llm_question", "llm_summarize", "paraphrase", "same_topic"]
SURROGATE_TEXTS = {
    "short": "Canberra",
    "long": "Canberra is the purpose-built capital of Australia, chosen as a compromise between Sydney "
            "and Melbourne; Parliament House opened there in 1988 after decades of planning and building.",
}


@pytest.fixture(scope="module", params=["tiny", "smollm2"])
def tokenizer(request):
    return tiny_tokenizer() if request.param == "tiny" else smollm2_tokenizer()


@pytest.fixture(scope="module")
def samples() -> list[dict]:
    """Twelve tinyqa samples as the backends see them (partner queries included)."""
    return [s.as_dict(sample_id=1000 + i) for i, s in enumerate(load_samples("tinyqa", n=12, seed=7, tokenizers=load_tokenizer))]


def _condition(name: str) -> dict:
    return CATALOGUE[name].as_dict()


def _build(name: str, sample: dict, tok, text: str | None = None):
    cond = _condition(name)
    if CATALOGUE[name].needs_surrogate and text is None:
        text = SURROGATE_TEXTS["long"]
    return build_prefix_ids(cond, sample, tok, surrogate_text=text)


def test_bare_has_no_prefix_and_bare_nl_an_empty_one(samples, tokenizer):
    for s in samples:
        assert build_prefix_ids(_condition("bare"), s, tokenizer) is None
        assert build_prefix_ids(_condition("bare_nl"), s, tokenizer) == []


@pytest.mark.parametrize("name", MATCHED)
@pytest.mark.parametrize("text", ["short", "long"])
def test_matched_conditions_have_exactly_q_tokens(name, text, samples, tokenizer):
    for s in samples:
        q = len(encode(tokenizer, s["query"]))
        ids = _build(name, s, tokenizer, SURROGATE_TEXTS[text] if CATALOGUE[name].needs_surrogate else None)
        assert len(ids) == q, (name, s["source_key"])


@pytest.mark.parametrize("name", sorted(CATALOGUE))
def test_every_builder_is_deterministic_and_ignores_the_database_id(name, samples, tokenizer):
    for s in samples:
        first = _build(name, s, tokenizer)
        again = _build(name, dict(s, id=s["id"] + 99_999), tokenizer)
        assert first == again, name


@pytest.mark.parametrize("name", sorted(CATALOGUE))
def test_no_prefix_contains_special_or_added_tokens(name, samples, tokenizer):
    specials = special_ids(tokenizer)
    assert specials, "the tokenizer's specials must be known for this test to mean anything"
    for s in samples:
        ids = _build(name, s, tokenizer) or []
        assert not set(ids) & specials, name
        assert all(0 <= i < len(tokenizer) for i in ids)


def test_scrambled_oracle_is_a_permutation_of_the_query(samples, tokenizer):
    moved = 0
    for s in samples:
        query = encode(tokenizer, s["query"])
        scrambled = _build("scrambled_oracle", s, tokenizer)
        assert sorted(scrambled) == sorted(query)
        moved += scrambled != query
    assert moved >= len(samples) - 1  # a shuffle that never moves anything is no shuffle


def test_oracle_is_the_query_and_fixed_texts_are_the_instruction(samples, tokenizer):
    s = samples[0]
    assert _build("oracle", s, tokenizer) == encode(tokenizer, s["query"])
    assert _build("surr_extractor", s, tokenizer) == encode(tokenizer, INSTRUCTION_TEXTS["extractor"])
    assert _build("adv_instruct", s, tokenizer) == encode(tokenizer, INSTRUCTION_TEXTS["adv_instruct"])
    q = len(encode(tokenizer, s["query"]))
    assert _build("extractor_matched", s, tokenizer) == encode(tokenizer, INSTRUCTION_TEXTS["extractor"])[:q]


def test_unrelated_query_uses_the_stored_partner(samples, tokenizer):
    for s in samples:
        partner = s["meta"]["unrelated_query"]
        assert partner != s["query"]
        q = len(encode(tokenizer, s["query"]))
        assert _build("unrelated_query", s, tokenizer) == match_length(encode(tokenizer, partner), q)


def test_random_tokens_differ_between_samples_and_seeds(samples, tokenizer):
    draws = {tuple(_build("random_tokens", s, tokenizer)) for s in samples}
    assert len(draws) == len(samples)
    other_seed = ConditionDefinition("random_tokens", "random_tokens", {"seed": 43}).as_dict()
    s = samples[0]
    assert build_prefix_ids(other_seed, s, tokenizer) != _build("random_tokens", s, tokenizer)


def test_repeat_token_repeats_one_token(samples, tokenizer):
    s = samples[0]
    ids = _build("repeat_token", s, tokenizer)
    assert set(ids) == {encode(tokenizer, "the")[0]}


def test_llm_surrogates_truncate_long_and_repeat_short_text(samples, tokenizer):
    s = samples[0]
    q = len(encode(tokenizer, s["query"]))
    long_ids = encode(tokenizer, SURROGATE_TEXTS["long"])
    assert len(long_ids) > q
    assert _build("llm_extract", s, tokenizer, SURROGATE_TEXTS["long"]) == long_ids[:q]
    short = encode(tokenizer, SURROGATE_TEXTS["short"])
    assert len(short) < q
    expected = [short[i % len(short)] for i in range(q)]
    assert _build("llm_extract", s, tokenizer, "  " + SURROGATE_TEXTS["short"] + "\n") == expected


def test_llm_surrogate_without_text_or_with_empty_text_is_an_error(samples, tokenizer):
    with pytest.raises(TrackerError, match="surrogate"):
        build_prefix_ids(_condition("llm_extract"), samples[0], tokenizer, surrogate_text=None)
    with pytest.raises(TrackerError, match="empty"):
        build_prefix_ids(_condition("llm_extract"), samples[0], tokenizer, surrogate_text="   ")


def test_unknown_kind_is_a_spec_error(samples, tokenizer):
    with pytest.raises(SpecError, match="unknown kind"):
        build_prefix_ids({"name": "x", "kind": "nope", "params": {}}, samples[0], tokenizer)


def test_doc_keywords_rank_by_frequency_then_first_occurrence():
    doc = "Cats chase mice. Mice fear cats, and cats sleep. Dogs bark at the mice and the cats."
    assert doc_keywords(doc, 3) == ["cats", "mice", "chase"]
    assert doc_keywords("The and of a", 5) == []


def test_match_length():
    assert match_length([1, 2, 3], 7) == [1, 2, 3, 1, 2, 3, 1]
    assert match_length([1, 2, 3], 2) == [1, 2]
    assert match_length([], 0) == []


def test_definition_hash_covers_texts_prompts_seeds_generators_and_modes():
    base = CATALOGUE["llm_extract"]
    h = base.definition_hash()
    variants = [
        {**base.params, "prompt": base.params["prompt"] + " Be brief."},
        {**base.params, "max_new_tokens": 32},
        {**base.params, "generator": "google/gemma-3-4b-it"},
        {**base.params, "matched": False},
    ]
    hashes = {ConditionDefinition(base.name, base.kind, p).definition_hash() for p in variants}
    assert len(hashes) == len(variants) and h not in hashes
    assert CATALOGUE["oracle_full"].definition_hash() != ConditionDefinition("oracle_full", "oracle", {}).definition_hash()
    assert CATALOGUE["oracle_full"].as_dict()["params"] == {"mode": "full"}
    assert ConditionDefinition("x", "oracle", {}).definition_hash() == ConditionDefinition("x", "oracle", {}).definition_hash()


def test_surrogate_request_renders_the_sample_and_hashes_settings(samples):
    s = samples[0]
    params = dict(CATALOGUE["llm_extract"].params)
    req = surrogate_request(params, s)
    assert s["doc"] in req.prompt and s["answer"] not in params["prompt"]
    assert req.kind == "extract" and req.max_new_tokens == params["max_new_tokens"]
    assert surrogate_request({**params, "max_new_tokens": 8}, s).prompt_hash != req.prompt_hash
    assert surrogate_request(params, samples[1]).prompt_hash != req.prompt_hash
    para = surrogate_request(dict(CATALOGUE["paraphrase"].params), s)
    assert s["query"] in para.prompt and s["doc"] not in para.prompt


def test_prompt_templates_may_not_use_the_answer():
    check_prompt_template("Summarize: {doc} for {query}", "p")
    with pytest.raises(SpecError, match="answer"):
        check_prompt_template("Hint: {answer}. {doc}", "conditions[0].params.prompt")
