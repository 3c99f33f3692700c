"""The encoder-decoder track's prefixes: keyword densities, wrong-doc keywords, first sentences.

Expected prefixes are computed here from the texts (keywords, sentence split, partner doc
looked up in the whole prepared dataset), then compared with the builders' ids.
"""
from __future__ import annotations

import pytest
from helpers.dataset_fixtures import FIXTURES, smollm2_tokenizer, tiny_tokenizer
from sqlalchemy import select, update

from tracker.conditions import (  # noqa: E402
    CATALOGUE,
    build_prefix_ids,
    doc_keywords,
    encode,
    first_sentence,
)
from tracker.datasets import clear_cache, load_prepared, load_samples  # noqa: E402
from tracker.db import get_engine, session_scope  # noqa: E402
from tracker.db.schema import Sample  # noqa: E402
from tracker.errors import SpecError, TrackerError  # noqa: E402
from tracker.planning import enqueue  # noqa: E402
from tracker.specs import parse_spec  # noqa: E402
from workers.tokenizers import load_tokenizer  # noqa: E402


@pytest.fixture(scope="module", params=["tiny", "smollm2"])
def tokenizer(request):
    return tiny_tokenizer() if request.param == "tiny" else smollm2_tokenizer()


@pytest.fixture(scope="module")
def samples() -> list[dict]:
    return [s.as_dict(sample_id=i) for i, s in enumerate(load_samples("tinyqa", n=15, seed=11, tokenizers=load_tokenizer))]


@pytest.fixture(scope="module")
def docs_by_key() -> dict[str, str]:
    return {s.source_key: s.doc for s in load_prepared("tinyqa", tokenizers=load_tokenizer)}


def build(name: str, sample: dict, tok) -> list[int]:
    return build_prefix_ids(CATALOGUE[name].as_dict(), sample, tok)


def test_every_sample_stores_its_partners_doc(samples, docs_by_key):
    for s in samples:
        partner = s["meta"]["unrelated_source_key"]
        assert partner != s["source_key"] and s["meta"]["unrelated_doc"] == docs_by_key[partner]


@pytest.mark.parametrize("k", [5, 10, 20])
def test_keyword_densities_and_wrong_doc_keywords(samples, tokenizer, k):
    for s in samples:
        assert build(f"kw{k}", s, tokenizer) == encode(tokenizer, " ".join(doc_keywords(s["doc"], k)))
    for s in samples:
        assert build("kw10", s, tokenizer) == build("surr_doc", s, tokenizer)  # ed01's surrogate is kw10
        wrong = " ".join(doc_keywords(s["meta"]["unrelated_doc"], 10))
        assert build("wrong_kw10", s, tokenizer) == encode(tokenizer, wrong) != build("kw10", s, tokenizer)
    assert len(doc_keywords(samples[0]["doc"], 20)) > len(doc_keywords(samples[0]["doc"], 5)) == 5


def test_first_sentences_own_and_partner(samples, tokenizer):
    for s in samples:
        own, partner = first_sentence(s["doc"]), first_sentence(s["meta"]["unrelated_doc"])
        normalized = " ".join(s["doc"].split())
        assert normalized.startswith(own) and (own == normalized or own[-1] in ".!?\"')]")
        assert build("first_sentence", s, tokenizer) == encode(tokenizer, own)
        assert build("wrong_sentence", s, tokenizer) == encode(tokenizer, partner)


def test_shuffled_sentences_keep_the_words_and_break_the_order(samples, tokenizer):
    moved = 0
    for s in samples:
        for name, source in (("shuffled_sentence", s["doc"]), ("shuffled_wrong_sentence", s["meta"]["unrelated_doc"])):
            words = first_sentence(source).split()
            text = tokenizer.decode(build(name, s, tokenizer))
            assert sorted(text.split()) == sorted(words), name
            moved += text.split() != words
    assert moved >= 2 * len(samples) - 2  # a shuffle that keeps the order is no shuffle


@pytest.mark.parametrize("text, sentence", [
    ("At sea level water boils at 100 C. At altitude it boils lower.", "At sea level water boils at 100 C."),
    ("Version 3.5 is out. 2020 was a year.", "Version 3.5 is out."),
    ('He said "stop." Then he left.', 'He said "stop."'),
    ("no end in sight", "no end in sight"),
    ("  Spaces\n between   words. Next", "Spaces between words."),
])
def test_first_sentence_rule(text, sentence):
    assert first_sentence(text) == sentence


def test_a_sample_without_the_partner_doc_is_a_clear_error(samples):
    old = dict(samples[0], meta={k: v for k, v in samples[0]["meta"].items() if k != "unrelated_doc"})
    for name in ("wrong_kw10", "wrong_sentence", "shuffled_wrong_sentence"):
        with pytest.raises(TrackerError, match="unrelated_doc") as err:
            build(name, old, tiny_tokenizer())
        assert "tracker enqueue" in err.value.hint


def test_enqueue_adds_the_partner_doc_to_samples_stored_without_it(sqlite_url):
    clear_cache()
    spec = parse_spec({"name": "wrong", "models": ["test-fake"], "mode": "encdec_q",
                       "datasets": [{"name": "ms_marco", "n": 3}], "conditions": ["bare", "wrong_kw10"]})
    enqueue(spec, db=sqlite_url, data_dir=str(FIXTURES), device="cpu", tokenizers=load_tokenizer)
    engine = get_engine(sqlite_url)
    with session_scope(engine) as s:  # as an older version stored them: no unrelated_doc, plus a key of its own
        for sample in s.scalars(select(Sample)).all():
            meta = {k: v for k, v in sample.meta.items() if k != "unrelated_doc"}
            s.execute(update(Sample).where(Sample.id == sample.id).values(meta={**meta, "url": "kept"}))
    enqueue(spec, db=sqlite_url, data_dir=str(FIXTURES), device="cpu", tokenizers=load_tokenizer)
    prepared = {p.source_key: p for p in load_prepared("ms_marco", data_dir=str(FIXTURES), tokenizers=load_tokenizer)}
    with session_scope(engine) as s:
        stored = s.scalars(select(Sample)).all()
        assert len(stored) == 3
        for sample in stored:
            assert sample.meta["unrelated_doc"] == prepared[sample.source_key].meta["unrelated_doc"]
            assert sample.meta["url"] == "kept"  # stored values are never overwritten


@pytest.mark.parametrize("params, field", [({"doc": "other"}, "doc"), ({"shuffle": "yes"}, "shuffle"),
                                           ({"k": 0}, "k")])
def test_bad_params_of_the_new_kinds_name_the_field(params, field):
    kind = "wrong_doc_keywords" if field == "k" else "doc_sentence"
    with pytest.raises(SpecError, match=rf"`conditions\[0\].params.{field}`"):
        parse_spec({"name": "x", "models": ["test-fake"], "datasets": ["tinyqa"],
                    "conditions": [{"name": "c", "kind": kind, "params": params}]})
