"""The one place that knows how transformers versions differ in what the scorer calls.

transformers 5.24 renamed the cache argument of every model forward and mask factory from
``past_key_values`` to ``cache`` (older 5.x take only ``past_key_values``; newer ones still
accept it with a deprecation warning until 5.40). A keyword a forward does not know is
swallowed by its ``**kwargs``, so passing the wrong one silently scores without the doc:
we read the keyword from the signature, once per class.
"""
from __future__ import annotations

import functools
import inspect

from torch import nn

NEW_CACHE_KEYWORD, OLD_CACHE_KEYWORD = "cache", "past_key_values"


@functools.cache
def _cache_keyword_of(function) -> str:
    parameters = inspect.signature(function).parameters
    return NEW_CACHE_KEYWORD if NEW_CACHE_KEYWORD in parameters else OLD_CACHE_KEYWORD


def cache_keyword(module: nn.Module) -> str:
    """The keyword `module`'s forward takes its KV cache under: ``cache`` (5.24+) or ``past_key_values``."""
    return _cache_keyword_of(type(module).forward)


def cache_kwargs(module: nn.Module, cache) -> dict:
    """``{keyword: cache}`` for a call of `module`."""
    return {cache_keyword(module): cache}


def mask_factory_cache_kwargs(factory, cache) -> dict:
    """``{keyword: cache}`` for a transformers.masking_utils factory (create_causal_mask, ...)."""
    return {_cache_keyword_of(factory): cache}
