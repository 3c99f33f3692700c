"""Statistics, reports, figures and MLflow logging for tracker experiments.

Public API (imported lazily, so ``import analysis`` stays cheap)::

    analyze_experiment(engine, experiment, plan, *, run_id=None, bootstrap=1000, seed=0) -> AnalysisReport
    build_report(results_frame, plan, *, experiment, run_id=None, token_parity=None, selections=None,
                 bootstrap=1000, seed=0) -> AnalysisReport
    resolve_tracking_uri(db_url, explicit=None) -> str
    default_params(db_url, *, spec_hash=None) -> dict
    log_to_mlflow(report, tracking_uri, run_name, params=None, spec_text=None) -> str
    log_analysis(report, tracking_uri, run_name, ...) -> LoggedRun (reuses a run of unchanged inputs)
    save_figures(report, directory, *, formats=("png", "pdf", "svg"), dpi=200) -> list[Path]
    compare_experiment(engine, experiment, *, by, a=None, b=None) -> DataFrame
    AnalysisReport.frames() -> dict[str, DataFrame]
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "AnalysisReport": "analysis.report",
    "ReportData": "analysis.report_data",
    "compare_experiment": "analysis.compare",
    "compare_figure": "analysis.compare",
    "log_analysis": "analysis.mlflow_log",
    "analyze_experiment": "analysis.report",
    "build_report": "analysis.report",
    "normalize_plan": "analysis.plan",
    "resolve_tracking_uri": "analysis.mlflow_log",
    "default_params": "analysis.mlflow_log",
    "log_to_mlflow": "analysis.mlflow_log",
    "make_figures": "analysis.figures",
    "save_figures": "analysis.figures",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'analysis' has no attribute {name!r}")
