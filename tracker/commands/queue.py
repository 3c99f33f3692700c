"""``tracker worker``, ``tracker status``, ``tracker requeue``, ``tracker workers``: the queue from the shell."""
from __future__ import annotations

import json
import time

import click

from tracker import queue
from tracker.commands.options import db_option
from tracker.db import get_engine
from tracker.render import format_option, render_records
from workers.worker.options import (
    CPU_BATCH_SIZE,
    CPU_GENERATION_BATCH_SIZE,
    GPU_BATCH_SIZE,
    GPU_GENERATION_BATCH_SIZE,
    WorkerOptions,
)

FAILED_SHOWN_IN_TABLE = 10


@click.command("worker")
@click.option("--gpu", type=int, default=None, metavar="N", help="Run on GPU N (same as --device cuda:N).")
@click.option("--device", default=None, metavar="DEVICE", help="cpu or cuda:N (default: cpu).")
@click.option("--model", "model", default=None, metavar="NAME",
              help="Only jobs of this model (default: every model with work, one after another).")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help=f"Most scoring jobs claimed at once (default {CPU_BATCH_SIZE} on the CPU, {GPU_BATCH_SIZE} on a "
                   "GPU); whole (sample, model, mode) groups are kept together, and the backend batches rows of "
                   "one shape across samples. 1 = one job per forward pass.")
@click.option("--generation-batch-size", type=click.IntRange(min=1), default=None,
              help=f"Most surrogate generations claimed and generated at once (default {CPU_GENERATION_BATCH_SIZE} "
                   f"on the CPU, {GPU_GENERATION_BATCH_SIZE} on a GPU); independent of --batch-size.")
@click.option("--max-jobs", type=click.IntRange(min=1), default=None, help="Stop after this many jobs.")
@click.option("--exit-when-empty", is_flag=True, help="Exit once no job is pending, running or blocked.")
@click.option("--lease-seconds", type=click.FloatRange(min=0.3), default=WorkerOptions.lease_seconds,
              show_default=True, help="Lease per claim; heartbeats renew it every third of it.")
@click.option("--poll-seconds", type=click.FloatRange(min=0.01), default=WorkerOptions.poll_seconds, show_default=True,
              help="Wait between claims while the queue is empty.")
@click.option("-v", "--verbose", is_flag=True, help="Log every claim.")
@db_option
def worker_cmd(gpu: int | None, device: str | None, model: str | None, batch_size: int | None,
               generation_batch_size: int | None, max_jobs: int | None,
               exit_when_empty: bool, lease_seconds: float, poll_seconds: float, verbose: bool, db: str | None) -> None:
    """Claim and score jobs until stopped (Ctrl-C / SIGTERM: finish the group in hand, exit 0).

    One process per device; any number of processes on any machines that reach the same
    PostgreSQL database. A SQLite database serves processes on one host only.

    \b
    Example:
        tracker worker --gpu 0 &
        tracker worker --gpu 1 &
        tracker worker --device cpu --model test-fake --exit-when-empty
    """
    import logging

    from tracker.catalogue import device_string
    from workers.devices import available_device, pin_gpu
    from workers.worker import QueueWorker, WorkerOptions, configure_logging

    configure_logging(logging.DEBUG if verbose else logging.INFO)
    device_string(gpu, device)  # syntax first: "either --gpu or --device", an unknown device name
    resolved, physical = pin_gpu(gpu) if gpu is not None else (available_device(None, device), None)
    options = WorkerOptions(
        device=resolved, physical_gpu=physical, model=model, batch_size=batch_size,
        generation_batch_size=generation_batch_size, max_jobs=max_jobs,
        exit_when_empty=exit_when_empty, lease_seconds=lease_seconds, poll_seconds=poll_seconds,
    )
    done = QueueWorker(get_engine(db), options).run()
    click.echo(f"{done} jobs finished by this worker.", err=True)


@click.command("status")
@click.argument("experiment", required=False)
@format_option()
@click.option("--watch", is_flag=True, help="Redraw every few seconds until Ctrl-C.")
@click.option("--interval", type=click.FloatRange(min=0.5), default=5.0, show_default=True,
              help="Seconds between redraws with --watch.")
@click.option("--run", "run_id", type=int, default=None, metavar="ID",
              help="Only the jobs of this run of EXPERIMENT (default: every run).")
@db_option
def status_cmd(experiment: str | None, fmt: str, watch: bool, interval: float, run_id: int | None,
               db: str | None) -> None:
    """Progress by condition and model, throughput, ETA, live workers and failed jobs.

    `--format csv` prints the counts table only (pure CSV) and the rest to stderr;
    `--format json` prints one JSON document.

    \b
    Example:
        tracker status exp03
        tracker status demo --run 2 --format json
        tracker status --watch
    """
    if run_id is not None and experiment is None:
        raise click.UsageError("--run needs an EXPERIMENT (run ids belong to one experiment)")
    engine = get_engine(db, create=False)
    while True:
        report = queue.queue_status(engine, experiment, run_id=run_id)
        text, notes = render_status(report, fmt)
        if watch:
            click.clear()
        click.echo(text)
        if notes:
            click.echo(notes, err=True)
        if not watch:
            return
        time.sleep(interval)


def _runs_note(report: queue.StatusReport) -> str | None:
    runs = report.runs or []
    if report.run_id is not None or len(runs) < 2:
        return None
    listed = ", ".join(f"{r['run_id']}" + (f" ({json.dumps(r['overrides'], sort_keys=True)})" if r["overrides"] else "")
                       for r in runs)
    return (f"note: {len(runs)} runs of {report.experiment} share these counts: {listed}; "
            f"one run: --run ID")


def render_status(report: queue.StatusReport, fmt: str) -> tuple[str, str | None]:
    """(stdout, notes for stderr): one JSON document; a pure CSV of the counts (the rest as
    notes); or the tables with throughput, ETA, workers and failures."""
    runs_note = _runs_note(report)
    if fmt == "json":
        return json.dumps({
            "experiment": report.experiment, "run_id": report.run_id,
            "runs": report.runs, "counts": report.counts, "totals": report.totals,
            "jobs_per_minute": round(report.jobs_per_minute, 3), "eta_seconds": report.eta_seconds,
            "workers": report.workers, "failed": report.failed, "notes": report.notes,
        }, default=str), runs_note
    columns = ["condition", "model", "mode", "blocked", "pending", "running", "done", "failed", "total"]
    counts = render_records(report.counts, fmt, columns)
    summary = _summary(report)
    if fmt == "csv":
        failed = (f"{len(report.failed)} failed jobs (their errors: --format table or json)"
                  if report.failed else None)
        notes = [f"Note: {note}" for note in report.notes]
        return counts, "\n".join(x for x in (runs_note, summary, failed, *notes) if x)
    parts = [counts, "\n" + summary]
    if runs_note:
        parts.append(runs_note)
    parts.append(f"\nlive workers: {len(report.workers)}")
    if report.workers:
        parts.append(render_records(report.workers, fmt, ["id", "host", "pid", "device", "model", "jobs_done",
                                                          "heartbeat_age_s"]))
    if report.failed:
        parts.append(f"\nfailed jobs: {len(report.failed)} (newest first; `tracker requeue EXP --failed` retries them)")
        parts.append(render_records(report.failed, fmt, ["job_id", "condition", "model", "mode", "attempts",
                                                         "error_type", "error_message"]))
        for row in report.failed[:FAILED_SHOWN_IN_TABLE]:
            if row.get("traceback"):
                parts.append(f"\n--- job {row['job_id']} traceback ---\n{row['traceback'].rstrip()}")
    if report.notes:
        parts.append("\n" + "\n".join(f"Note: {note}" for note in report.notes))
    return "\n".join(parts), None


def _summary(report: queue.StatusReport) -> str:
    totals = report.totals
    measured = report.measured_seconds or report.window_seconds
    span = f"{measured / 60:.1f} min" if measured >= 60 else f"{measured:.0f} s"
    return (f"{sum(totals.values())} jobs: " + ", ".join(f"{totals[k]} {k}" for k in totals)
            + f"\nthroughput: {report.jobs_per_minute:.1f} jobs/min ({report.done_last_window} finished in the last "
            f"{span}); ETA: {_duration(report.eta_seconds)}")


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "unknown (nothing finished recently)"
    if seconds == 0:
        return "done"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


@click.command("requeue")
@click.argument("experiment")
@click.option("--failed", "failed", is_flag=True, help="Failed jobs (and failed jobs they wait on) run again.")
@click.option("--stale", "stale", is_flag=True, help="Running jobs whose lease expired go back to pending.")
@db_option
def requeue_cmd(experiment: str, failed: bool, stale: bool, db: str | None) -> None:
    """Put failed and/or stale jobs of EXPERIMENT back in the queue (both when no flag is given).

    \b
    Example:
        tracker requeue exp03 --failed
        tracker requeue exp03 --stale
    """
    engine = get_engine(db)
    if not failed and not stale:
        failed = stale = True
    if stale:
        report = queue.requeue_stale(engine, experiment)
        click.echo(f"{report.stale} stale running jobs back to pending.")
    if failed:
        report = queue.requeue_failed(engine, experiment)
        click.echo(f"{report.pending + report.blocked} failed jobs requeued: {report.pending} pending, "
                   f"{report.blocked} blocked on unfinished dependencies.")


@click.command("workers")
@format_option()
@click.option("--live", is_flag=True, help="Only workers whose heartbeat is current.")
@db_option
def workers_cmd(fmt: str, live: bool, db: str | None) -> None:
    """List registered workers: host, pid, device, model, state (running/lost/stopped), heartbeat age.

    \b
    Example:
        tracker workers
        tracker workers --live --format json
    """
    rows = queue.list_workers(get_engine(db, create=False), live_only=live)
    click.echo(render_records(rows, fmt, ["id", "name", "host", "pid", "device", "model", "state", "jobs_done",
                                          "heartbeat_age_s", "self_check", "started_at"]))


COMMANDS = [worker_cmd, status_cmd, requeue_cmd, workers_cmd]
