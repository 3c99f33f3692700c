"""Experiment specs: one YAML file per shipped experiment, loaded into typed objects.

``load_spec("exp03")`` loads a shipped spec, ``load_spec("my/spec.yaml")`` a user's file;
both are validated before anything is written (a bad spec raises
:class:`tracker.errors.SpecError` naming the field).
"""
from __future__ import annotations

from tracker.specs.loader import (
    list_specs,
    load_spec,
    load_spec_file,
    parse_spec,
    spec_names,
)
from tracker.specs.schema import (
    DatasetEntry,
    ExperimentSpec,
    ModelEntry,
    SelectRule,
    SpecSize,
    StageSize,
    StageSpec,
)

__all__ = [
    "DatasetEntry", "ExperimentSpec", "ModelEntry", "SelectRule", "SpecSize", "StageSize", "StageSpec",
    "list_specs", "load_spec", "load_spec_file", "parse_spec", "spec_names",
]
