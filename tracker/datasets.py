"""Dataset loaders: hub rows -> (doc, query, answer, source key) samples.

Each dataset maps its hub rows to samples with the filters the seed implies (no unanswerable
rows, answers present in usable form) and a *doc-preparation recipe* (which passage, which
window, which word budget). The recipe is part of a sample's identity: change it and every
sample, and so every job, is new.

Sampling is deterministic and does not depend on the order of rows in a file: usable rows
are ordered by a hash of (seed, source key) and the first N are taken, so ``--limit 10``
takes the first 10 of the very samples a full run takes. Each sample's partner for the
``unrelated_query`` condition is chosen by a fixed rule over the whole usable dataset (no
seed, no N), so every run that shares a sample gives it the same partner.

Each sample also stores its partner's doc (``meta.unrelated_doc``) for the wrong-doc
conditions (``wrong_kw10``, ``wrong_sentence``, ...).

Token-length recipes (MS MARCO, ed02): ``pad_to_tokens: L`` appends unrelated passages (the
docs of the rows that follow the sample in the partner order, skipping any that contain the
answer) after the doc, separated by ``"\n"``, and cuts the result so that it has exactly L
tokens under ``tokenizer`` (a model name; ``scoring`` = the scored model, resolved by
enqueue). ``max_doc_tokens: M`` keeps only rows whose own doc has at most M tokens, so every
length level of one experiment pads the very same docs. What was appended is recorded in
``meta.padding``.

Rows come from the hub through ``datasets`` when it is reachable, or from local copies with
the same fields under ``--data-dir`` / ``$TRACKER_DATA_DIR`` (see :func:`find_local_files`).
Token-length recipes count with a tokenizer that the caller's loader provides (``tokenizers=``).
The bundled ``tinyqa`` set ships inside the package.
"""
from __future__ import annotations

import json
import os
import re
import socket
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
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


# --- reading rows ------------------------------------------------------------------------

def resolve_data_dir(explicit: str | os.PathLike[str] | None = None) -> Path | None:
    """``--data-dir``, else ``$TRACKER_DATA_DIR``, else None (use the hub)."""
    return settings.data_dir(explicit)


def _split_files(root: Path, split: str, *, recursive: bool) -> list[Path]:
    """Files of ``split`` under ``root``: named ``<split>``, ``<split>-*``, ``<split>_*`` or ``<split>.*``,
    or inside a folder named ``<split>`` (hidden folders such as ``.cache`` skipped)."""
    found = []
    candidates = root.rglob("*") if recursive else [*root.iterdir(), *((root / split).iterdir()
                                                                       if (root / split).is_dir() else [])]
    for path in candidates:
        rel = path.relative_to(root)
        if not path.is_file() or not path.name.endswith(LOCAL_SUFFIXES) or any(p.startswith(".") for p in rel.parts):
            continue
        named = re.match(re.escape(split) + r"($|[-_.])", path.name) is not None
        if named or split in rel.parts[:-1]:
            found.append(path)
    return sorted(found)


def _config_folder(root: Path, config: str) -> Path | None:
    """The shallowest folder named ``config`` under ``root`` (the hub keeps a config's files in one)."""
    if (root / config).is_dir():
        return root / config
    matches = sorted((p for p in root.rglob(config) if p.is_dir()), key=lambda p: (len(p.parts), str(p)))
    return matches[0] if matches else None


def local_roots(data_dir: Path, info: DatasetInfo) -> list[Path]:
    """Where a dataset's local copy may be: ``DIR/<name>``, the hub repo ``DIR/<owner>/<repo>`` and ``DIR/<repo>``."""
    roots = [data_dir / info.name]
    if info.hub_id:
        roots += [data_dir / info.hub_id, data_dir / info.hub_id.split("/")[-1]]
    return list(dict.fromkeys(roots))


def find_local_files(data_dir: Path, info: DatasetInfo, split: str) -> list[Path]:
    """Local copies of one split: the first root of :func:`local_roots` that has files wins.

    In a root, a dataset with a config (MS MARCO ``v1.1``, TriviaQA ``rc.wikipedia``,
    HotpotQA ``distractor``) is read from the folder named after the config, at any depth,
    searched recursively; a dataset without one (SQuAD 2.0 keeps its files in ``squad_v2/``,
    neural-bridge in ``data/``) from the whole root, recursively. Files belong to the split
    by name (``validation.jsonl``, ``validation-00000-of-00001.parquet``) or by a folder
    named after it. Without the config folder, only the root's own files (and ``<split>/``)
    count, so one config's files are never read as another's.
    """
    for root in local_roots(data_dir, info):
        if not root.is_dir():
            continue
        if info.config:
            folder = _config_folder(root, info.config)
            files = (_split_files(folder, split, recursive=True) if folder is not None
                     else _split_files(root, split, recursive=False))
        else:
            files = _split_files(root, split, recursive=True)
        if files:
            return files
    return []


def read_local_file(path: Path) -> list[dict[str, Any]]:
    """Rows of one parquet, JSON-lines or JSON (a list of rows) file."""
    return [row for _, row in read_local_rows(path)]


def read_local_rows(path: Path) -> list[tuple[str, Any]]:
    """(where, row) of one parquet, JSON-lines or JSON file; ``where`` names the line / row for errors.

    Bytes that are not UTF-8 and lines that are not JSON are :class:`DatasetError` naming the line.
    """
    if path.name.endswith(".parquet"):
        import pyarrow.parquet as pq

        try:
            rows = pq.read_table(path).to_pylist()
        except Exception as err:  # noqa: BLE001 - pyarrow raises several types for a broken file
            raise DatasetError(f"{path} is not a readable parquet file: {err}",
                               hint="download the file again") from err
        return [(f"row {i + 1}", row) for i, row in enumerate(rows)]
    data = path.read_bytes()
    lines = data.split(b"\n")
    for number, raw in enumerate(lines, start=1):
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise DatasetError(f"{path} line {number}: bytes that are not UTF-8 (at byte {err.start} of the line).",
                               hint="re-encode the file as UTF-8 (or remove the row)") from err
    text = data.decode("utf-8")
    if path.name.endswith(".json") and text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as err:
            raise DatasetError(f"{path} line {err.lineno}: not valid JSON ({err.msg}).",
                               hint="fix the file, or write one JSON object per line (.jsonl)") from err
        return [(f"item {i + 1}", row) for i, row in enumerate(items)]
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append((f"line {number}", json.loads(line)))
        except json.JSONDecodeError as err:
            raise DatasetError(f"{path} line {number}: not JSON ({err.msg}).",
                               hint="write one JSON object per line") from err
    return rows


_TYPE_WORDS = {"str": "a string", "list": "a list", "object": "an object", "key": "a string or an integer"}


def _type_word(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    for kind, word in ((str, "a string"), (list, "a list"), (dict, "an object"), (int, "an integer"),
                       (float, "a number")):
        if isinstance(value, kind):
            return word
    return type(value).__name__


def check_row(name: str, row: Any, where: str) -> None:
    """Raise :class:`DatasetError` when ``row`` does not have the shape of ``name``'s rows (:data:`ROW_FIELDS`).

    ``where`` says which file and line, for the message.
    """
    if not isinstance(row, dict):
        raise DatasetError(f"{where}: the row is {_type_word(row)}, not an object.",
                           hint=f"each row of {name} is one JSON object with the hub's fields")
    for field_name, kind in ROW_FIELDS.get(name, {}).items():
        parent, _, child = field_name.rpartition(".")
        holder = row.get(parent) if parent else row
        if parent and not isinstance(holder, dict):
            continue  # the parent is null or missing (or was reported itself)
        value = holder.get(child) if child else None
        if kind == "key":
            if value is None or (isinstance(value, str) and not value.strip()) or isinstance(value, bool) \
                    or not isinstance(value, (str, int)):
                what = "missing" if value is None else f"{_type_word(value)}"
                raise DatasetError(f"{where}: field `{field_name}` is {what}; every {name} row needs it as its key.",
                                   hint=f"fix or remove that row (fields of a {name} row: "
                                        f"{', '.join(ROW_FIELDS[name])})")
            continue
        expected = {"str": str, "list": list, "object": dict}[kind]
        if value is not None and not isinstance(value, expected):
            shown = repr(value) if isinstance(value, (str, int, float)) and len(repr(value)) < 40 else ""
            raise DatasetError(
                f"{where}: field `{field_name}` is {_type_word(value)}{f' ({shown})' if shown else ''}, "
                f"expected {_TYPE_WORDS[kind]}.",
                hint=f"fix or remove that row (fields of a {name} row: "
                     + ", ".join(f"{k}: {_TYPE_WORDS[v]}" for k, v in ROW_FIELDS[name].items()) + ")",
            )


def hub_reachable(timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection((HUB_HOST, 443), timeout=timeout):
            return True
    except OSError:
        return False


def _offline_error(info: DatasetInfo, split: str, data_dir: Path | None, why: str) -> DatasetError:
    where = f"{data_dir}/{info.name}/{split}.parquet (or .jsonl)" if data_dir else f"DIR/{info.name}/{split}.jsonl"
    return DatasetError(
        f"Cannot load dataset {info.name} ({info.hub_id}, split {split}): {why}.",
        hint=f"download it where the hub is reachable and pass --data-dir DIR (or set {ENV_DATA_DIR}) "
             f"with a local copy at {where}, same fields as the hub rows",
    )


def load_hub_rows(info: DatasetInfo, split: str) -> list[dict[str, Any]]:
    """Rows from the hub (or its local cache when HF_HUB_OFFLINE / HF_DATASETS_OFFLINE is set)."""
    if not settings.datasets_offline() and not hub_reachable():
        raise _offline_error(info, split, None, f"{HUB_HOST} is not reachable")
    import datasets

    try:
        ds = datasets.load_dataset(info.hub_id, info.config, split=split)
    except Exception as err:  # noqa: BLE001 - any hub/cache failure means "no data here"
        raise _offline_error(info, split, None, f"{type(err).__name__}: {err}") from err
    return [dict(r) for r in ds]


def load_raw_rows(name: str, split: str | None = None, data_dir: str | os.PathLike[str] | None = None) -> list[dict]:
    """All raw rows of one split: bundled (tinyqa), local copy (data dir) or hub."""
    info = get_dataset_info(name)
    split = split or info.default_split
    if info.hub_id is None:
        text = resources.files("tracker.data").joinpath(f"{name}.jsonl").read_text(encoding="utf-8")
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    root = resolve_data_dir(data_dir)
    if root is not None:
        files = find_local_files(root, info, split)
        if not files:
            raise _offline_error(info, split, root, f"no local copy under {root}")
        rows = []
        for path in files:
            for where, row in read_local_rows(path):
                check_row(name, row, f"{path} {where}")
                rows.append(row)
        return rows
    return load_hub_rows(info, split)


# --- preparation, partners and sampling ---------------------------------------------------

def _norm_query(q: str) -> str:
    return " ".join(q.lower().split())


def partner_order(rows: Iterable[Any]) -> list[Any]:
    """Rows (anything with a ``source_key``) in the fixed cyclic order partners and padding follow."""
    return sorted(rows, key=lambda r: (content_hash(["partner", r.source_key]), r.source_key))


def assign_partners(rows: list[MappedRow]) -> dict[str, MappedRow]:
    """source_key -> partner row for ``unrelated_query``: a fixed rule over the whole dataset.

    Rows are ordered by a hash of their key (no seed); each row's partner is the next row in
    that cyclic order whose query differs from its own.
    """
    order = partner_order(rows)
    partners: dict[str, MappedRow] = {}
    n = len(order)
    for i, row in enumerate(order):
        own = _norm_query(row.query)
        for step in range(1, n):
            cand = order[(i + step) % n]
            if _norm_query(cand.query) != own:
                partners[row.source_key] = cand
                break
    return partners


def prepare_rows(name: str, rows: Iterable[Mapping[str, Any]], recipe: Mapping[str, Any],
                 tokenizers: TokenizerLoader | None = None) -> list[PreparedSample]:
    """Map and filter raw rows, attach partners; duplicates of a source key keep the first row."""
    return prepare_rows_counted(name, rows, recipe, tokenizers)[0]


def prepare_rows_counted(name: str, rows: Iterable[Mapping[str, Any]], recipe: Mapping[str, Any],
                         tokenizers: TokenizerLoader | None = None) -> tuple[list[PreparedSample], int]:
    """:func:`prepare_rows` and the number of raw rows read."""
    info = get_dataset_info(name)
    rows = list(rows)
    mapped: dict[str, MappedRow] = {}
    for row in rows:
        m = info.mapper(row, recipe)
        if m is not None and m.source_key not in mapped:
            mapped[m.source_key] = m
    usable = list(mapped.values())
    if recipe.get("max_doc_tokens") or recipe.get("pad_to_tokens"):
        usable = filter_doc_tokens(usable, recipe, tokenizers)
    partners = assign_partners(usable)
    rhash = recipe_hash(recipe)
    out = []
    for m in usable:
        partner = partners.get(m.source_key)
        meta = dict(m.meta)
        if partner is not None:
            meta["unrelated_query"] = partner.query
            meta["unrelated_source_key"] = partner.source_key
            meta["unrelated_doc"] = partner.doc
        out.append(PreparedSample(name, recipe["split"], m.source_key, m.doc, m.query, m.answer, meta,
                                  dict(recipe), rhash))
    return out, len(rows)


def sampling_order(samples: list[PreparedSample], seed: int) -> list[PreparedSample]:
    """Samples in the seeded order every run takes its first N from (file order is irrelevant)."""
    return sorted(samples, key=lambda s: (content_hash(["sample", seed, s.source_key]), s.source_key))


_prepared_cache: dict[str, tuple[list[PreparedSample], int]] = {}


def _load_prepared_counted(name: str, *, split: str | None, recipe: Mapping[str, Any] | None,
                           data_dir: str | os.PathLike[str] | None,
                           tokenizers: TokenizerLoader | None) -> tuple[list[PreparedSample], int]:
    full = build_recipe(name, split, recipe)
    root = resolve_data_dir(data_dir)
    key = content_hash([full, str(root) if root else None])
    if key not in _prepared_cache:
        rows = load_raw_rows(name, full["split"], root)
        _prepared_cache[key] = prepare_rows_counted(name, rows, full, tokenizers)
    return _prepared_cache[key]


def load_prepared(name: str, *, split: str | None = None, recipe: Mapping[str, Any] | None = None,
                  data_dir: str | os.PathLike[str] | None = None,
                  tokenizers: TokenizerLoader | None = None) -> list[PreparedSample]:
    """All usable samples of one dataset split under a recipe (cached per process)."""
    return _load_prepared_counted(name, split=split, recipe=recipe, data_dir=data_dir, tokenizers=tokenizers)[0]


def clear_cache() -> None:
    _prepared_cache.clear()
    _padded_cache.clear()


@dataclass
class SampleDraw:
    """The samples one dataset gives a run, and what was left out on the way."""

    samples: list[PreparedSample]
    rows: int  # raw rows read
    usable: int  # rows left after the dataset's filters (unanswerable, no doc, duplicates, ...)
    warning: str | None = None  # the cap asked for more than the dataset has

    @property
    def skipped(self) -> int:
        return self.rows - self.usable


def draw_samples(
    name: str, *, n: int | None = None, seed: int = 42, split: str | None = None,
    recipe: Mapping[str, Any] | None = None, data_dir: str | os.PathLike[str] | None = None,
    limit: int | None = None, tokenizers: TokenizerLoader | None = None, label: str | None = None,
) -> SampleDraw:
    """The first ``min(n, limit)`` samples of the seeded order (all usable ones when n is None).

    ``limit`` is a cap: a dataset with fewer usable rows gives what it has, with a warning.
    A spec's own ``n`` beyond the usable rows (and no cap) is an error naming both numbers.
    """
    usable, rows = _load_prepared_counted(name, split=split, recipe=recipe, data_dir=data_dir, tokenizers=tokenizers)
    label = label or name
    want = len(usable) if n is None else n
    warning = None
    if limit is None and want > len(usable):
        raise DatasetError(
            f"Dataset {label} has {len(usable)} usable rows ({rows} read, {rows - len(usable)} skipped by its "
            f"filters); the spec asks for n={want}.",
            hint=f"lower the dataset's n in the spec to at most {len(usable)}, or cap it: --limit {label}={len(usable)}",
        )
    if limit is not None:
        want = limit if n is None else min(n, limit)
        if want > len(usable):
            warning = (f"dataset {label} has {len(usable)} usable rows ({rows} read), fewer than the {want} asked "
                       f"for (--limit {limit}): taking all {len(usable)}")
            want = len(usable)
    chosen = sampling_order(usable, seed)[:want]
    if usable and usable[0].recipe.get("pad_to_tokens"):
        chosen = pad_samples(chosen, usable, tokenizers)
    return SampleDraw(chosen, rows, len(usable), warning)


def load_samples(
    name: str, *, n: int | None = None, seed: int = 42, split: str | None = None,
    recipe: Mapping[str, Any] | None = None, data_dir: str | os.PathLike[str] | None = None,
    limit: int | None = None, tokenizers: TokenizerLoader | None = None,
) -> list[PreparedSample]:
    """The samples of :func:`draw_samples`."""
    return draw_samples(name, n=n, seed=seed, split=split, recipe=recipe, data_dir=data_dir, limit=limit,
                        tokenizers=tokenizers).samples


# --- token lengths: tokenizers, filtering and padding (ed02) -------------------------------

TokenizerLoader = Callable[[str], Any]  # model name -> tokenizer (``workers.tokenizers.load_tokenizer``)


def recipe_tokenizer(recipe: Mapping[str, Any], tokenizers: TokenizerLoader | None) -> Any:
    """The tokenizer a token-length recipe counts with, from the loader the caller passed."""
    name = str(recipe.get("tokenizer") or TOKENIZER_IS_SCORING_MODEL)
    if name == TOKENIZER_IS_SCORING_MODEL:
        raise DatasetError("A token-length recipe names `tokenizer: scoring` but no scoring model was resolved.",
                           hint="enqueue the spec (enqueue resolves it), or write the model name in the recipe")
    if tokenizers is None:
        raise DatasetError(f"The recipe counts doc tokens with {name}'s tokenizer, but no tokenizer loader was given.",
                           hint="pass tokenizers=workers.tokenizers.load_tokenizer (the CLI and tracker.api do)")
    return tokenizers(name)


def count_tokens(tokenizer: Any, text: str) -> int:
    """Token count of ``text`` as the scorers tokenize a doc (no special tokens)."""
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def filter_doc_tokens(rows: list[MappedRow], recipe: Mapping[str, Any],
                      tokenizers: TokenizerLoader | None = None) -> list[MappedRow]:
    """Rows whose doc has at most ``max_doc_tokens`` tokens (default: ``pad_to_tokens``)."""
    limit = int(recipe.get("max_doc_tokens") or recipe["pad_to_tokens"])
    if recipe.get("pad_to_tokens") and limit > int(recipe["pad_to_tokens"]):
        raise DatasetError(f"max_doc_tokens {limit} exceeds pad_to_tokens {recipe['pad_to_tokens']}: such docs "
                           "cannot be padded to the target.", hint="set max_doc_tokens to at most pad_to_tokens")
    tokenizer = recipe_tokenizer(recipe, tokenizers)
    counts = tokenizer([r.doc for r in rows], add_special_tokens=False)["input_ids"] if rows else []
    return [r for r, ids in zip(rows, counts) if len(ids) <= limit]


def pad_samples(chosen: list[PreparedSample], usable: list[PreparedSample],
                tokenizers: TokenizerLoader | None = None) -> list[PreparedSample]:
    """``chosen`` with each doc padded to exactly ``pad_to_tokens`` tokens (see the module docstring).

    The passages appended to a sample are the docs that follow it in the partner order of
    ``usable`` (the whole usable dataset), so the padding never depends on N or the seed.
    """
    if not chosen:
        return chosen
    recipe = chosen[0].recipe
    target = int(recipe["pad_to_tokens"])
    tokenizer = recipe_tokenizer(recipe, tokenizers)
    order = partner_order(usable)
    index = {s.source_key: i for i, s in enumerate(order)}
    out = []
    for sample in chosen:
        key = (sample.dataset, sample.recipe_hash, sample.source_key)
        if key not in _padded_cache:
            start = index[sample.source_key]
            followers = [order[(start + step) % len(order)] for step in range(1, len(order))]
            _padded_cache[key] = _pad_one(sample, followers, target, tokenizer)
        out.append(_padded_cache[key])
    return out


_padded_cache: dict[tuple[str, str, str], PreparedSample] = {}


def _pad_one(sample: PreparedSample, followers: list[PreparedSample], target: int, tokenizer: Any) -> PreparedSample:
    doc_tokens = count_tokens(tokenizer, sample.doc)
    answer = sample.answer.lower()
    parts, used, estimate = [sample.doc], [], doc_tokens
    for other in followers:
        if estimate > target + 8:
            break
        if other.doc == sample.doc or (answer and answer in other.doc.lower()):
            continue  # never pad with the answer, nor with the doc itself
        parts.append(other.doc)
        used.append(other.source_key)
        estimate += count_tokens(tokenizer, PAD_SEPARATOR + other.doc)
    text = PAD_SEPARATOR.join(parts)
    if count_tokens(tokenizer, text) < target:
        raise DatasetError(
            f"Dataset {sample.dataset}: the unrelated passages of {len(followers) + 1} usable rows are too few to pad "
            f"sample {sample.source_key} to {target} tokens.",
            hint="use the full dataset split (or a smaller pad_to_tokens)",
        )
    padded = cut_to_tokens(text, len(sample.doc), target, tokenizer)
    starts = [sum(len(p) + len(PAD_SEPARATOR) for p in parts[: i + 1]) for i in range(len(used))]
    appended = [key for key, start in zip(used, starts) if start < len(padded)]
    meta = {**sample.meta, "padding": {"target_tokens": target, "doc_tokens": doc_tokens,
                                       "pad_tokens": target - doc_tokens, "doc_chars": len(sample.doc),
                                       "separator": PAD_SEPARATOR, "passages": appended}}
    return PreparedSample(sample.dataset, sample.split, sample.source_key, padded, sample.query, sample.answer,
                          meta, sample.recipe, sample.recipe_hash)


def cut_to_tokens(text: str, keep_chars: int, target: int, tokenizer: Any, search: int = 64) -> str:
    """A prefix ``text[:c]`` (``c >= keep_chars``, so the doc stays whole) with exactly ``target`` tokens.

    Binary search for the shortest prefix with at least ``target`` tokens; when a merge makes
    the count jump past the target there, nearby cut points are tried.
    """
    lo, hi = keep_chars, len(text)  # count(text[:lo]) <= target <= count(text[:hi])
    if count_tokens(tokenizer, text[:lo]) == target:
        return text[:lo]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if count_tokens(tokenizer, text[:mid]) >= target:
            hi = mid
        else:
            lo = mid
    for offset in range(search):
        for cut in (hi - offset, hi + offset):
            if keep_chars < cut <= len(text) and count_tokens(tokenizer, text[:cut]) == target:
                return text[:cut]
    raise DatasetError(f"Cannot cut a padded doc to exactly {target} tokens (the tokenizer merges across every "
                       f"cut point near character {hi}).", hint="try another pad_to_tokens value")
