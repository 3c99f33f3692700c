"""Preparation, partners and sampling: the first N of a seeded order, the same for every run.
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from tracker import settings
from tracker.datasets.catalog import (
    MappedRow,
    PreparedSample,
    build_recipe,
    get_dataset_info,
    norm_query,
    partner_order,
    recipe_hash,
)
from tracker.datasets.files import load_raw_rows
from tracker.datasets.padding import (
    TokenizerLoader,
    clear_padding_cache,
    filter_doc_tokens,
    pad_samples,
)
from tracker.errors import DatasetError
from tracker.identity import content_hash

# --- preparation, partners and sampling ---------------------------------------------------

def assign_partners(rows: list[MappedRow]) -> dict[str, MappedRow]:
    """source_key -> partner row for ``unrelated_query``: a fixed rule over the whole dataset.

    Rows are ordered by a hash of their key (no seed); each row's partner is the next row in
    that cyclic order whose query differs from its own.
    """
    order = partner_order(rows)
    partners: dict[str, MappedRow] = {}
    n = len(order)
    for i, row in enumerate(order):
        own = norm_query(row.query)
        for step in range(1, n):
            cand = order[(i + step) % n]
            if norm_query(cand.query) != own:
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
    root = settings.data_dir(data_dir)
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
    clear_padding_cache()


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
