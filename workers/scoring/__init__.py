"""Scoring engines: decoder-only two-phase / full / prefix-LM, encoder-decoder, attention probing.

`SCORER_VERSION` names the decoder scorer's semantics; the catalogue owns the strings
(:data:`tracker.catalogue.SCORER_VERSIONS`), because enqueue stamps them on jobs.
"""
from __future__ import annotations

from tracker.catalogue import DECODER, ENCDEC, SCORER_VERSIONS

SCORER_VERSION = SCORER_VERSIONS[DECODER]
ENCDEC_SCORER_VERSION = SCORER_VERSIONS[ENCDEC]
