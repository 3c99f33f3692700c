"""Analyse an experiment as its spec plans it: the one entry point of `tracker analyze` and `tracker run`."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy import Engine

from analysis.mlflow_log import (
    LoggedRun,
    default_params,
    log_analysis,
    resolve_tracking_uri,
    write_artifacts,
)
from analysis.provenance import provenance
from analysis.report import AnalysisReport, analyze_experiment


@dataclass
class SpecAnalysis:
    """One analysis: the report, where MLflow holds it, where ``--out`` wrote it."""

    report: AnalysisReport
    tracking_uri: str | None
    mlflow_run_id: str | None
    out_dir: Path | None
    mlflow: LoggedRun | None = None  # created=False: the inputs were unchanged, this is the existing run
    provenance: dict | None = None


def plan_from_spec(spec: Any) -> dict[str, Any]:
    """The spec's analysis plan with display order and the selection rule of its stage filled in."""
    plan = dict(spec.analysis)
    plan.setdefault("datasets", [d.key for d in spec.datasets])
    plan.setdefault("conditions", [c.name for c in spec.conditions])
    plan.setdefault("dataset_entries", [
        {"label": d.key, "name": d.name, "recipe": {**dict(d.recipe), **({"split": d.split} if d.split else {})}}
        for d in spec.datasets
    ])
    selection = plan.get("selection") or {}
    if "stage" in selection:
        rule = next((s.select for s in spec.stages if s.number == selection["stage"] and s.select), None)
        if rule is not None:
            plan["selection"] = {"fraction": rule.fraction, "by": rule.by, **selection}
    return plan


def spec_text(spec: Any) -> str:
    """The spec as YAML (normalized, defaults filled in) for the MLflow artifact."""
    return yaml.safe_dump(spec.to_dict(), sort_keys=False, allow_unicode=True)


def analyze_spec(
    engine: Engine,
    db_url: str,
    spec: Any,
    *,
    run_id: int | None = None,
    mlflow: bool = True,
    mlflow_uri: str | None = None,
    out: str | Path | None = None,
    dpi: int | None = None,
    bootstrap: int = 1000,
    seed: int = 0,
) -> SpecAnalysis:
    """Analyse the experiment's run (latest unless ``run_id``), log it to MLflow, write ``out``.

    The MLflow URI is resolved (and a URI pointing at the tracker's own database refused)
    before any work, so a bad ``--mlflow-uri`` fails fast.
    """
    uri = resolve_tracking_uri(db_url, mlflow_uri) if mlflow else None
    report = analyze_experiment(engine, spec.name, plan_from_spec(spec), run_id=run_id, bootstrap=bootstrap, seed=seed)
    text = spec_text(spec)
    record = provenance(report, db_url, spec_hash=spec.spec_hash())
    logged = None
    if uri:
        logged = log_analysis(report, uri, f"{spec.name} run {report.run_id}",
                              default_params(db_url, spec_hash=spec.spec_hash()), text, provenance=record)
    out_dir = None
    if out:
        out_dir = Path(out)
        write_artifacts(report, out_dir, text, provenance=record, dpi=dpi)
    return SpecAnalysis(report, uri, logged.run_id if logged else None, out_dir, logged, record)
