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
answer) after the doc, separated by ``"
"``, and cuts the result so that it has exactly L
tokens under ``tokenizer`` (a model name; ``scoring`` = the scored model, resolved by
enqueue). ``max_doc_tokens: M`` keeps only rows whose own doc has at most M tokens, so every
length level of one experiment pads the very same docs. What was appended is recorded in
``meta.padding``.

Rows come from the hub through ``datasets`` when it is reachable, or from local copies with
the same fields under ``--data-dir`` / ``$TRACKER_DATA_DIR`` (see :func:`find_local_files`).
Token-length recipes count with a tokenizer that the caller's loader provides (``tokenizers=``).
The bundled ``tinyqa`` set ships inside the package.

Modules: ``catalog`` (datasets, mappers, recipes), ``files`` (reading rows), ``prepare``
(partners, sampling), ``padding`` (token lengths).
"""
from __future__ import annotations

from tracker.datasets.catalog import (
    DATASET_CHOICES,
    DATASETS,
    ENV_DATA_DIR,
    HUB_HOST,
    LOCAL_SUFFIXES,
    MS_MARCO_NO_ANSWER,
    PAD_SEPARATOR,
    ROW_FIELDS,
    TOKEN_LENGTH_KEYS,
    TOKENIZER_IS_SCORING_MODEL,
    DatasetInfo,
    MappedRow,
    Mapper,
    PreparedSample,
    answer_window,
    build_recipe,
    get_dataset_info,
    map_hotpot_qa,
    map_ms_marco,
    map_neural_bridge,
    map_squad_v2,
    map_tinyqa,
    map_trivia_qa,
    norm_query,
    partner_order,
    recipe_hash,
    truncate_words,
)
from tracker.datasets.files import (
    check_row,
    find_local_files,
    hub_reachable,
    load_hub_rows,
    load_raw_rows,
    local_roots,
    read_local_file,
    read_local_rows,
)
from tracker.datasets.padding import (
    TokenizerLoader,
    clear_padding_cache,
    count_tokens,
    cut_to_tokens,
    filter_doc_tokens,
    pad_samples,
    recipe_tokenizer,
)
from tracker.datasets.prepare import (
    SampleDraw,
    assign_partners,
    clear_cache,
    draw_samples,
    load_prepared,
    load_samples,
    prepare_rows,
    prepare_rows_counted,
    sampling_order,
)

__all__ = [
    "DATASETS",
    "DATASET_CHOICES",
    "DatasetInfo",
    "ENV_DATA_DIR",
    "HUB_HOST",
    "LOCAL_SUFFIXES",
    "MS_MARCO_NO_ANSWER",
    "MappedRow",
    "Mapper",
    "PAD_SEPARATOR",
    "PreparedSample",
    "ROW_FIELDS",
    "SampleDraw",
    "TOKENIZER_IS_SCORING_MODEL",
    "TOKEN_LENGTH_KEYS",
    "TokenizerLoader",
    "answer_window",
    "assign_partners",
    "build_recipe",
    "check_row",
    "clear_cache",
    "clear_padding_cache",
    "count_tokens",
    "cut_to_tokens",
    "draw_samples",
    "filter_doc_tokens",
    "find_local_files",
    "get_dataset_info",
    "hub_reachable",
    "load_hub_rows",
    "load_prepared",
    "load_raw_rows",
    "load_samples",
    "local_roots",
    "map_hotpot_qa",
    "map_ms_marco",
    "map_neural_bridge",
    "map_squad_v2",
    "map_tinyqa",
    "map_trivia_qa",
    "norm_query",
    "pad_samples",
    "partner_order",
    "prepare_rows",
    "prepare_rows_counted",
    "read_local_file",
    "read_local_rows",
    "recipe_hash",
    "recipe_tokenizer",
    "sampling_order",
    "truncate_words",
]
