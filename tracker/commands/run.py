"""``tracker run``: enqueue, score and analyse an experiment in one command."""
from __future__ import annotations

import click

from tracker.commands.options import db_option, limit_option
from tracker.db import get_engine
from tracker.settings import resolve_db_url


@click.command("run")
@click.argument("experiment")
@click.option("--workers", type=int, default=1, show_default=True, help="Worker subprocesses to start on this machine.")
@click.option("--device", default=None, help="cpu, cuda (workers spread over the GPUs), cuda:N or auto (default: the spec's).")
@click.option("--model", "models", multiple=True, help="Score with this model instead of the spec's (repeatable).")
@limit_option
@click.option("--data-dir", type=click.Path(file_okay=False), default=None,
              help="Local copies of hub datasets (parquet/JSON); also $TRACKER_DATA_DIR.")
@click.option("--batch-size", type=int, default=None, help="Jobs per claim (default: the worker's).")
@click.option("--mlflow-uri", default=None, metavar="URI", help="MLflow tracking URI (default: sqlite:///mlflow.db beside the database).")
@click.option("--no-mlflow", is_flag=True, help="Do not log the analysis to MLflow.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True,
              help="How to print the analysis.")
@db_option
def run_cmd(experiment: str, workers: int, device: str | None, models: tuple[str, ...], limit: int | dict[str, int] | None,
            data_dir: str | None, batch_size: int | None, mlflow_uri: str | None, no_mlflow: bool, fmt: str,
            db: str | None) -> None:
    """Enqueue EXPERIMENT, score it with worker subprocesses until done, analyse it, log to MLflow.

    Interrupt it (Ctrl-C) at any time and run the same command again: it resumes where it
    stopped and never scores a job twice.

    \b
    Example:
        tracker run demo
        tracker run demo --limit 8 --no-mlflow
        tracker --db postgresql+psycopg://me@dbhost/tracker run exp02 --device cuda --workers 4
    """
    from tqdm import tqdm

    from analysis.from_spec import analyze_spec
    from tracker.commands.analyze import mlflow_lines
    from tracker.commands.experiments import render_report
    from tracker.planning import enqueue
    from tracker.runner import (
        drive_workers,
        run_progress,
        start_workers,
        stop_workers,
        worker_devices,
        worker_log_dir,
    )
    from tracker.specs import load_spec
    from workers.tokenizers import load_tokenizer

    if workers < 1:
        raise click.BadParameter("must be at least 1", param_hint="--workers")
    url = resolve_db_url(db)
    engine = get_engine(url)
    spec = load_spec(experiment)
    device = device or spec.device
    devices = worker_devices(device, workers)
    say = (lambda *a, **k: click.echo(*a, err=True, **k)) if fmt == "json" else click.echo

    report = enqueue(spec, engine=engine, models=list(models) or None, limit=limit, data_dir=data_dir,
                     device=devices[0].split(":")[0], tokenizers=load_tokenizer)
    say(render_report(report))
    start = run_progress(engine, report.run_id)
    if start.unfinished:
        log_dir = worker_log_dir(url)
        say(f"scoring with {len(devices)} worker(s) on {', '.join(devices)}; logs in {log_dir}/")
        procs = start_workers(url, devices, models=list(models) or None, batch_size=batch_size, log_dir=log_dir)
        stream = click.get_text_stream("stderr")
        bar = tqdm(total=start.total, initial=start.finished, unit="job", desc=spec.name, dynamic_ncols=True,
                   smoothing=0.1, file=stream, mininterval=1.0 if stream.isatty() else 15.0)

        def show(p):
            bar.total = p.total
            if p.finished > bar.n:
                bar.update(p.finished - bar.n)
            bar.set_postfix(failed=p.failed, refresh=stream.isatty())  # a terminal sees time tick

        try:
            final = drive_workers(engine, report.run_id, procs, show)
        except KeyboardInterrupt:
            bar.close()
            click.echo("Interrupted: stopping the workers (they release their jobs)...", err=True)
            stop_workers(procs)
            done = run_progress(engine, report.run_id)
            click.echo(f"{done.finished} of {done.total} jobs finished. Run the same command again to resume.", err=True)
            raise SystemExit(130)
        finally:
            bar.close()
        if final.unfinished:
            say(f"warning: {final.unfinished} job(s) are not finished (blocked on failed dependencies?); "
                f"see `tracker status {spec.name}`")
        if final.failed:
            say(f"warning: {final.failed} job(s) failed; see `tracker status {spec.name}`, "
                f"retry with `tracker requeue {spec.name} --failed`")
    result = analyze_spec(engine, url, spec, run_id=report.run_id, mlflow=not no_mlflow, mlflow_uri=mlflow_uri)
    if fmt == "json":
        click.echo(result.report.to_json())
        return
    click.echo("")
    click.echo(result.report.render_text())
    if result.mlflow is not None:
        click.echo("\n" + mlflow_lines(result))


COMMANDS = [run_cmd]
