"""Scoring modes: the string stored on every scoring job.

Decoder-only:
- ``two_phase``         Phase A ``[BOS]+prefix+[\\n]+doc``, keep BOS+doc, re-rotate doc keys by
                        -(P+1); Phase B ``[\\n]+query+[\\n]+answer``. Bare = ``[BOS]+doc``.
- ``full``              Phase B attends to the whole Phase A cache (no selection/re-rotation).
- ``prefix_lm_causal``  Phase A with a causal mask over prefix+doc, Phase B over the whole cache.
- ``prefix_lm_bidir``   Phase A with a bidirectional mask over prefix+doc (the sliding window
                        kept on sliding layers), Phase B over the whole cache.

Encoder-decoder:
- ``encdec_q``          encoder prefix+doc, prefix hidden from cross-attention; decoder
                        ``[start]+query+answer``.
- ``encdec_nq``         decoder ``[start]+answer``.
- ``encdec_rq``         decoder ``[start]+random ids of the query's length+answer``.
- ``encdec_q_visible``  as ``encdec_q`` with the prefix visible to cross-attention.
Probing variants add the suffix ``_probe`` (eager attention, attention shares recorded).
"""
from __future__ import annotations

TWO_PHASE = "two_phase"
FULL = "full"
PREFIX_LM_CAUSAL = "prefix_lm_causal"
PREFIX_LM_BIDIR = "prefix_lm_bidir"

ENCDEC_Q = "encdec_q"
ENCDEC_NQ = "encdec_nq"
ENCDEC_RQ = "encdec_rq"
ENCDEC_Q_VISIBLE = "encdec_q_visible"

PROBE_SUFFIX = "_probe"

DECODER_MODES: tuple[str, ...] = (TWO_PHASE, FULL, PREFIX_LM_CAUSAL, PREFIX_LM_BIDIR)
ENCDEC_BASE_MODES: tuple[str, ...] = (ENCDEC_Q, ENCDEC_NQ, ENCDEC_RQ, ENCDEC_Q_VISIBLE)
ENCDEC_MODES: tuple[str, ...] = ENCDEC_BASE_MODES + tuple(m + PROBE_SUFFIX for m in ENCDEC_BASE_MODES)
ALL_MODES: tuple[str, ...] = DECODER_MODES + ENCDEC_MODES


def is_probe(mode: str) -> bool:
    """Whether the mode records attention (needs eager attention)."""
    return mode.endswith(PROBE_SUFFIX)


def base_mode(mode: str) -> str:
    """The mode without its ``_probe`` suffix."""
    return mode[: -len(PROBE_SUFFIX)] if is_probe(mode) else mode


def is_decoder_mode(mode: str) -> bool:
    return mode in DECODER_MODES


def is_encdec_mode(mode: str) -> bool:
    return mode in ENCDEC_MODES
