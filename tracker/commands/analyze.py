"""``tracker analyze``: the seed's paired statistics for one experiment, logged to MLflow."""
from __future__ import annotations

import click

from tracker.commands.options import db_option
from tracker.db import get_engine
from tracker.settings import redact_url, resolve_db_url
from tracker.specs import load_spec


@click.command("analyze")
@click.argument("experiment")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True,
              help="Print the report as text tables or as JSON (key `effects`: one row per comparison).")
@click.option("--run", "run_id", type=int, default=None, help="Experiment run id (default: the latest run).")
@click.option("--mlflow-uri", default=None, metavar="URI",
              help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db beside the tracker's SQLite file).")
@click.option("--no-mlflow", is_flag=True, help="Do not log to MLflow.")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Also write tables, figures (PNG, PDF and SVG) and the report here.")
@click.option("--dpi", type=click.IntRange(min=50, max=1200), default=None,
              help="Resolution of the PNG figures written with --out (default 200; PDF and SVG are vector).")
@click.option("--bootstrap", type=int, default=1000, show_default=True, help="Bootstrap resamples for the CIs of d.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the bootstrap.")
@db_option
def analyze_cmd(experiment: str, fmt: str, run_id: int | None, mlflow_uri: str | None, no_mlflow: bool,
                out: str | None, dpi: int | None, bootstrap: int, seed: int, db: str | None) -> None:
    """Paired tests and effect sizes of EXPERIMENT (a spec name or a spec file), logged to MLflow.

    An experiment that is not complete is analysed on what is there; the report says what
    is missing.

    \b
    Example:
        tracker analyze exp03
        tracker analyze demo --format json --no-mlflow
        tracker analyze exp02 --out results/exp02 --mlflow-uri sqlite:///mlflow.db
    """
    from analysis.from_spec import analyze_spec

    url = resolve_db_url(db)
    spec = load_spec(experiment)
    engine = get_engine(url, create=False)
    result = analyze_spec(engine, url, spec, run_id=run_id, mlflow=not no_mlflow, mlflow_uri=mlflow_uri,
                          out=out, dpi=dpi, bootstrap=bootstrap, seed=seed)
    click.echo(result.report.to_json() if fmt == "json" else result.report.render_text())
    say = (lambda text: click.echo(text, err=True)) if fmt == "json" else click.echo
    if result.mlflow is not None:
        say("\n" + mlflow_lines(result))
    if result.out_dir:
        say(f"tables and figures written to {result.out_dir}")


def mlflow_lines(result) -> str:
    """Where the analysis is in MLflow: a new run, or the existing one when the inputs were unchanged."""
    from analysis.mlflow_log import experiment_url

    logged = result.mlflow
    head = (f"MLflow run {logged.run_id}" if logged.created
            else f"inputs unchanged: existing MLflow run {logged.run_id}")
    lines = [f"{head} in {redact_url(result.tracking_uri)}"]
    if logged.created and logged.changes:
        lines.append("  changed since the previous run: " + "; ".join(logged.changes))
    lines.append(f"  browse: mlflow ui --backend-store-uri {result.tracking_uri}")
    lines.append(f"  then open {experiment_url(logged.experiment_id)}")
    return "\n".join(lines)


COMMANDS = [analyze_cmd]
