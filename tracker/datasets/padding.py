"""Token lengths (ed02): the recipe's tokenizer, doc-length filters, padding to exact lengths.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from tracker.datasets.catalog import (
    PAD_SEPARATOR,
    TOKENIZER_IS_SCORING_MODEL,
    MappedRow,
    PreparedSample,
    partner_order,
)
from tracker.errors import DatasetError

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


def clear_padding_cache() -> None:
    _padded_cache.clear()
