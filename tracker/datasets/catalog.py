"""The datasets: their rows' shapes, mappers to (doc, query, answer), recipes and partner order.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from tracker import settings
from tracker.errors import DatasetError
from tracker.identity import content_hash

ENV_DATA_DIR = settings.ENV_DATA_DIR
TOKEN_LENGTH_KEYS = frozenset({"pad_to_tokens", "max_doc_tokens", "tokenizer"})
TOKENIZER_IS_SCORING_MODEL = "scoring"  # ``tokenizer: scoring`` = the tokenizer of the scored model
PAD_SEPARATOR = "\n"
LOCAL_SUFFIXES = (".parquet", ".jsonl", ".json")
HUB_HOST = "huggingface.co"
MS_MARCO_NO_ANSWER = "No Answer Present."


@dataclass(frozen=True)
class MappedRow:
    """One usable hub row, before partner assignment."""

    source_key: str
    doc: str
    query: str
    answer: str
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PreparedSample:
    """A sample ready to store: its identity is (dataset, source_key, recipe_hash)."""

    dataset: str
    split: str
    source_key: str
    doc: str
    query: str
    answer: str
    meta: dict[str, Any]
    recipe: dict[str, Any]
    recipe_hash: str

    def as_dict(self, sample_id: int | None = None) -> dict[str, Any]:
        """The ``sample`` dict the prefix builders and scorers take."""
        return {"id": sample_id, "dataset": self.dataset, "source_key": self.source_key, "doc": self.doc,
                "query": self.query, "answer": self.answer, "meta": self.meta}


Mapper = Callable[[Mapping[str, Any], Mapping[str, Any]], "MappedRow | None"]


@dataclass(frozen=True)
class DatasetInfo:
    """A dataset: where it lives on the hub, its default split and recipe, its row mapper."""

    name: str
    hub_id: str | None
    config: str | None
    default_split: str
    recipe: Mapping[str, Any]
    mapper: Mapper
    description: str = ""
    recipe_keys: frozenset[str] = frozenset({"doc_max_words"})  # what a spec may set in `recipe`


# --- text helpers ----------------------------------------------------------------------

def _clean(text: Any) -> str:
    return str(text or "").strip()


def truncate_words(text: str, max_words: int | None) -> str:
    """The first ``max_words`` whitespace-separated words of ``text`` (formatting kept)."""
    if not max_words:
        return text
    spans = [m.span() for m in re.finditer(r"\S+", text)]
    if len(spans) <= max_words:
        return text
    return text[: spans[max_words - 1][1]]


def answer_window(text: str, start: int, max_words: int) -> str:
    """A window of ``max_words`` words of ``text`` containing the character ``start``.

    The answer sits about a third into the window, so the doc leads up to it and goes on.
    """
    spans = [m.span() for m in re.finditer(r"\S+", text)]
    if len(spans) <= max_words:
        return text.strip()
    idx = next((i for i, (a, b) in enumerate(spans) if b > start), len(spans) - 1)
    first = max(0, min(idx - max_words // 3, len(spans) - max_words))
    last = first + max_words - 1
    return text[spans[first][0]: spans[last][1]]


def _find_answer(text: str, candidates: Iterable[str]) -> tuple[int, str] | None:
    """Earliest case-insensitive whole-word match of the first candidate that occurs."""
    for cand in candidates:
        cand = cand.strip()
        if not cand:
            continue
        m = re.search(r"(?<!\w)" + re.escape(cand) + r"(?!\w)", text, flags=re.IGNORECASE)
        if m:
            return m.start(), m.group(0)
    return None


# --- mappers: one per dataset ----------------------------------------------------------

def map_ms_marco(row: Mapping[str, Any], recipe: Mapping[str, Any]) -> MappedRow | None:
    """MS MARCO v1.1: doc = the first selected passage; answer = the first real answer."""
    answers = [_clean(a) for a in (row.get("answers") or [])]
    answers = [a for a in answers if a and a != MS_MARCO_NO_ANSWER]
    passages = row.get("passages") or {}
    selected = list(passages.get("is_selected") or [])
    texts = list(passages.get("passage_text") or [])
    urls = list(passages.get("url") or [])
    pick = next((i for i, flag in enumerate(selected) if int(flag) == 1 and i < len(texts)), None)
    query = _clean(row.get("query"))
    if not answers or pick is None or not query:
        return None
    doc = truncate_words(_clean(texts[pick]), recipe.get("doc_max_words"))
    meta = {"query_id": row.get("query_id"), "query_type": row.get("query_type"),
            "url": urls[pick] if pick < len(urls) else None, "answers": answers}
    return MappedRow(str(row["query_id"]), doc, query, answers[0], meta)


def map_squad_v2(row: Mapping[str, Any], recipe: Mapping[str, Any]) -> MappedRow | None:
    """SQuAD 2.0: doc = context; unanswerable rows (no answer text) are skipped."""
    answers = row.get("answers") or {}
    texts = [_clean(t) for t in (answers.get("text") or [])]
    starts = list(answers.get("answer_start") or [])
    query, doc = _clean(row.get("question")), _clean(row.get("context"))
    if not texts or not texts[0] or not query or not doc:
        return None
    meta = {"title": row.get("title"), "answer_start": starts[0] if starts else None}
    return MappedRow(str(row["id"]), truncate_words(doc, recipe.get("doc_max_words")), query, texts[0], meta)


def map_trivia_qa(row: Mapping[str, Any], recipe: Mapping[str, Any]) -> MappedRow | None:
    """TriviaQA rc.wikipedia: doc = a word window of the first wiki page containing the answer."""
    answer = row.get("answer") or {}
    value = _clean(answer.get("value"))
    aliases = [_clean(a) for a in (answer.get("aliases") or [])]
    query = _clean(row.get("question"))
    pages = row.get("entity_pages") or {}
    contexts = list(pages.get("wiki_context") or [])
    titles = list(pages.get("title") or [])
    if not value or not query:
        return None
    for i, context in enumerate(contexts):
        found = _find_answer(context or "", [value, *aliases])
        if found is None:
            continue
        start, matched = found
        doc = answer_window(context, start, int(recipe.get("doc_max_words") or 300))
        if matched.lower() not in doc.lower():
            continue
        meta = {"title": titles[i] if i < len(titles) else None, "matched_answer": matched,
                "aliases": aliases[:10]}
        return MappedRow(str(row["question_id"]), doc.strip(), query, value, meta)
    return None


def map_hotpot_qa(row: Mapping[str, Any], recipe: Mapping[str, Any]) -> MappedRow | None:
    """HotpotQA distractor: doc = the supporting paragraphs in context order."""
    answer, query = _clean(row.get("answer")), _clean(row.get("question"))
    if not answer or not query:
        return None
    if recipe.get("skip_yes_no", True) and answer.lower() in ("yes", "no"):
        return None
    support = set((row.get("supporting_facts") or {}).get("title") or [])
    context = row.get("context") or {}
    paragraphs = [
        "".join(sentences).strip()
        for title, sentences in zip(context.get("title") or [], context.get("sentences") or [])
        if title in support
    ]
    doc = "\n".join(p for p in paragraphs if p)
    if not doc:
        return None
    meta = {"type": row.get("type"), "level": row.get("level"), "titles": sorted(support)}
    return MappedRow(str(row["id"]), truncate_words(doc, recipe.get("doc_max_words")), query, answer, meta)


def map_neural_bridge(row: Mapping[str, Any], recipe: Mapping[str, Any]) -> MappedRow | None:
    """neural-bridge rag-dataset-12000: context/question/answer; the key hashes the row's text."""
    doc, query, answer = _clean(row.get("context")), _clean(row.get("question")), _clean(row.get("answer"))
    if not doc or not query or not answer:
        return None
    key = content_hash([doc, query], 20)
    return MappedRow(key, truncate_words(doc, recipe.get("doc_max_words")), query, answer, {})


def map_tinyqa(row: Mapping[str, Any], recipe: Mapping[str, Any]) -> MappedRow | None:
    """The bundled tinyqa set: id/topic/context/question/answer."""
    doc, query, answer = _clean(row.get("context")), _clean(row.get("question")), _clean(row.get("answer"))
    if not doc or not query or not answer:
        return None
    return MappedRow(str(row["id"]), truncate_words(doc, recipe.get("doc_max_words")), query, answer,
                     {"topic": row.get("topic")})


DATASETS: dict[str, DatasetInfo] = {
    d.name: d
    for d in (
        DatasetInfo("ms_marco", "microsoft/ms_marco", "v1.1", "validation", {"loader": "ms_marco/1"},
                    map_ms_marco, "MS MARCO v1.1: web queries, doc = the selected passage",
                    frozenset({"doc_max_words", *TOKEN_LENGTH_KEYS})),
        DatasetInfo("squad_v2", "rajpurkar/squad_v2", None, "validation", {"loader": "squad_v2/1"},
                    map_squad_v2, "SQuAD 2.0: Wikipedia paragraphs, answerable questions only"),
        DatasetInfo("trivia_qa", "mandarjoshi/trivia_qa", "rc.wikipedia", "validation",
                    {"loader": "trivia_qa/1", "doc_max_words": 300}, map_trivia_qa,
                    "TriviaQA rc.wikipedia: a 300-word window of the wiki page around the answer"),
        DatasetInfo("hotpot_qa", "hotpotqa/hotpot_qa", "distractor", "validation",
                    {"loader": "hotpot_qa/1", "skip_yes_no": True}, map_hotpot_qa,
                    "HotpotQA distractor: the supporting paragraphs; yes/no questions skipped",
                    frozenset({"doc_max_words", "skip_yes_no"})),
        DatasetInfo("neural_bridge", "neural-bridge/rag-dataset-12000", None, "test",
                    {"loader": "neural_bridge/1"}, map_neural_bridge,
                    "neural-bridge rag-dataset-12000: naturally long docs"),
        DatasetInfo("tinyqa", None, None, "test", {"loader": "tinyqa/1"}, map_tinyqa,
                    "tinyqa: 60 short passages written for this project (bundled)"),
    )
}

# The shape of each dataset's rows, checked on local files before mapping (see :func:`check_row`):
# "key" = required, a non-empty string or integer; "str" / "list" / "object" = that type or null.
ROW_FIELDS: dict[str, dict[str, str]] = {
    "ms_marco": {"query_id": "key", "query": "str", "answers": "list", "passages": "object",
                 "passages.passage_text": "list", "passages.is_selected": "list"},
    "squad_v2": {"id": "key", "question": "str", "context": "str", "answers": "object",
                 "answers.text": "list", "answers.answer_start": "list"},
    "trivia_qa": {"question_id": "key", "question": "str", "answer": "object", "answer.value": "str",
                  "answer.aliases": "list", "entity_pages": "object", "entity_pages.wiki_context": "list",
                  "entity_pages.title": "list"},
    "hotpot_qa": {"id": "key", "question": "str", "answer": "str", "supporting_facts": "object",
                  "supporting_facts.title": "list", "context": "object", "context.title": "list",
                  "context.sentences": "list"},
    "neural_bridge": {"context": "str", "question": "str", "answer": "str"},
    "tinyqa": {"id": "key", "context": "str", "question": "str", "answer": "str"},
}

# Every choice a loader makes, in words: `tracker experiments --describe EXP` and the README print these.
DATASET_CHOICES: dict[str, tuple[str, ...]] = {
    "ms_marco": (
        "hub microsoft/ms_marco, config v1.1, split validation",
        "doc = the first passage marked is_selected; rows with no selected passage are skipped",
        f"answer = the first answer that is not {MS_MARCO_NO_ANSWER!r}; rows with none are skipped (unanswerable)",
        "source key = query_id",
    ),
    "squad_v2": (
        "hub rajpurkar/squad_v2 (no config), split validation",
        "doc = context; answer = the first of answers.text",
        "unanswerable questions (empty answers.text) are skipped",
        "source key = id",
    ),
    "trivia_qa": (
        "hub mandarjoshi/trivia_qa, config rc.wikipedia, split validation",
        "doc = a 300-word window (doc_max_words) of the first wiki page that contains the answer value or an "
        "alias (whole-word, case-insensitive), the answer about a third into the window",
        "rows whose answer is on no page are skipped",
        "answer = answer.value; source key = question_id",
    ),
    "hotpot_qa": (
        "hub hotpotqa/hotpot_qa, config distractor, split validation",
        "doc = the supporting paragraphs (supporting_facts titles) in context order, joined by newlines",
        "yes/no questions are skipped by default (their answer is not in the doc); recipe skip_yes_no: false keeps them",
        "source key = id",
    ),
    "neural_bridge": (
        "hub neural-bridge/rag-dataset-12000 (no config), split test",
        "doc = context (naturally long); rows with an empty context, question or answer are skipped",
        "source key = a hash of (context, question): the dataset has no ids",
    ),
    "tinyqa": (
        "bundled with the package (60 passages written for this project), split test",
        "source key = id",
    ),
}


def get_dataset_info(name: str) -> DatasetInfo:
    try:
        return DATASETS[name]
    except KeyError:
        raise DatasetError(f"Unknown dataset {name!r}.", hint=f"known datasets: {', '.join(DATASETS)}") from None


def build_recipe(name: str, split: str | None = None, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The full doc-preparation recipe: defaults + overrides + dataset and split.

    A change in a mapper's output must bump its ``loader`` version in :data:`DATASETS`, so
    that samples prepared the old way are never matched to the new recipe.
    """
    info = get_dataset_info(name)
    unknown = sorted(set(overrides or {}) - info.recipe_keys)
    if unknown:
        raise DatasetError(f"Dataset {name} has no recipe option {unknown[0]!r}.",
                           hint=f"its options: {', '.join(sorted(info.recipe_keys))}")
    return {**info.recipe, **dict(overrides or {}), "dataset": name, "split": split or info.default_split}


def recipe_hash(recipe: Mapping[str, Any]) -> str:
    return content_hash(dict(recipe))


def norm_query(q: str) -> str:
    return " ".join(q.lower().split())


def partner_order(rows: Iterable[Any]) -> list[Any]:
    """Rows (anything with a ``source_key``) in the fixed cyclic order partners and padding follow."""
    return sorted(rows, key=lambda r: (content_hash(["partner", r.source_key]), r.source_key))
