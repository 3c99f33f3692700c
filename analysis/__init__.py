"""Statistics, reports, figures and MLflow logging for tracker experiments.

Where things are (import the module; notebooks use ``tracker.api``, which composes these)::

    analysis.report.analyze_experiment(engine, experiment, plan, *, run_id=None, bootstrap=1000, seed=0) -> AnalysisReport
    analysis.report.build_report(results_frame, plan, *, experiment, run_id=None, token_parity=None, selections=None,
                 bootstrap=1000, seed=0) -> AnalysisReport
    analysis.mlflow_log.resolve_tracking_uri(db_url, explicit=None) -> str
    analysis.mlflow_log.default_params(db_url, *, spec_hash=None) -> dict
    analysis.mlflow_log.log_to_mlflow(report, tracking_uri, run_name, params=None, spec_text=None) -> str
    analysis.mlflow_log.log_analysis(report, tracking_uri, run_name, ...) -> LoggedRun (reuses a run of unchanged inputs)
    analysis.figures.save_figures(report, directory, *, formats=("png", "pdf", "svg"), dpi=200) -> list[Path]
    analysis.compare.compare_experiment(engine, experiment, *, by, a=None, b=None) -> DataFrame
    AnalysisReport.frames() -> dict[str, DataFrame]
"""
