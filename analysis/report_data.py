"""The report as data: its tables, notes and run facts, and their JSON and DataFrame forms.

Every module that reads a report imports this one; it imports no other module of
``analysis``, so nothing here can close an import circle.
"""
from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd


@dataclass
class ReportData:
    """Every table of one experiment run's analysis, plus what was missing and why.

    The data alone: rendering, figures and MLflow logging read it; the builder
    (:mod:`analysis.report`) makes its subclass :class:`~analysis.report.AnalysisReport`.
    """

    experiment: str
    run_id: int | None
    tables: dict[str, pd.DataFrame]
    effects: pd.DataFrame
    missing: pd.DataFrame
    notes: list[str] = field(default_factory=list)
    info: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """JSON-ready: NaN and inf become null, numpy scalars plain numbers."""
        return {
            "experiment": self.experiment,
            "run_id": self.run_id,
            "info": _json_safe(self.info),
            "notes": list(self.notes),
            "effects": frame_records(self.effects),
            "missing": frame_records(self.missing),
            "tables": {name: frame_records(t) for name, t in self.tables.items() if name not in ("effects", "missing")},
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    def frames(self) -> dict[str, pd.DataFrame]:
        """Every table as its own DataFrame (copies), keyed by table name; ``effects`` first."""
        ordered = {"effects": self.effects, **self.tables}
        return {name: table.copy() for name, table in ordered.items()}

    def mlflow_params(self) -> dict:
        """What the report itself knows for MLflow params (models, N, seed, scorer versions)."""
        info = self.info
        return {
            "experiment": self.experiment,
            "run_id": self.run_id,
            "models": ",".join(info.get("models", [])),
            "modes": ",".join(info.get("modes", [])),
            "datasets": ",".join(info.get("datasets", [])),
            "n_samples": info.get("n_samples"),
            "n_per_dataset": json.dumps(info.get("n_per_dataset", {}), sort_keys=True),
            "seed": info.get("seed"),
            "bootstrap": info.get("bootstrap"),
            "scorer_version": ",".join(sorted(set(info.get("scorer_versions", {}).values()))),
            "reference": info.get("reference"),
        }


def _json_safe(value):
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if value is pd.NA or value is pd.NaT:
        return None
    return value


def _column_values(series: pd.Series) -> list:
    """One column as JSON-safe Python values (column-wise: fast for big tables)."""
    if pd.api.types.is_bool_dtype(series.dtype) and not series.isna().any():
        return series.astype(bool).tolist()
    if pd.api.types.is_integer_dtype(series.dtype) and not series.isna().any():
        return series.astype("int64").tolist()
    if pd.api.types.is_float_dtype(series.dtype):
        values = series.to_numpy(dtype=float, na_value=np.nan)
        return [v if math.isfinite(v) else None for v in values.tolist()]
    return [_json_safe(None if _is_missing(v) else v) for v in series.tolist()]


def _is_missing(value) -> bool:
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    return isinstance(value, float) and not math.isfinite(value)


def frame_records(frame: pd.DataFrame) -> list[dict]:
    """DataFrame rows as JSON-safe dicts (no NaN: missing values are null)."""
    names = [str(c) for c in frame.columns]
    columns = [_column_values(frame.iloc[:, j]) for j in range(frame.shape[1])]
    return [dict(zip(names, values)) for values in zip(*columns)] if len(frame) else []
