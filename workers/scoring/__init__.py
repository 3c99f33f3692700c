"""Scoring engines. `SCORER_VERSION` names the scoring semantics: any change to what is scored
(segment layout, BOS choice, separators, masks, re-rotation, NLL definition) must change it
together with the golden file in tests/golden/ in the same commit.
"""
from __future__ import annotations

SCORER_VERSION = "dec-2pass-1"
