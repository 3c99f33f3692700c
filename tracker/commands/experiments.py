"""``tracker experiments`` (the spec catalogue) and ``tracker enqueue`` (spec -> jobs)."""
from __future__ import annotations

import click

from tracker.commands.options import db_option, limit_option
from tracker.datasets import DATASET_CHOICES, DATASETS, build_recipe, load_prepared
from tracker.planning import EnqueueReport, enqueue
from tracker.render import format_option, render_rows
from tracker.specs import ExperimentSpec, list_specs, load_spec
from workers.tokenizers import load_tokenizer


def _bundled_counts(spec: ExperimentSpec) -> dict[str, int]:
    """Sample counts of "all rows" datasets that ship with the package (no hub access)."""
    counts = {}
    for d in spec.datasets:
        if d.n is None and DATASETS[d.name].hub_id is None:
            counts[d.key] = len(load_prepared(d.name, split=d.split, recipe=d.recipe))
    return counts


def size_formula(spec: ExperimentSpec) -> str:
    """``samples x conditions x models [x modes] = jobs`` per stage, summed."""
    size = spec.size(samples_per_dataset=_bundled_counts(spec))
    parts = []
    for st in size.stages:
        per_condition = st.score_jobs // max(st.samples * st.conditions * size.models, 1)
        term = f"{st.samples} x {st.conditions} x {size.models}"
        parts.append(term + (f" x {per_condition}" if per_condition > 1 else ""))
    return " + ".join(parts) + f" = {size.score_jobs}"


@click.command("experiments")
@format_option()
@click.option("--describe", "describe", default=None, metavar="EXP",
              help="Describe one spec (a name or a file): what it runs and every dataset choice it makes.")
def experiments_cmd(fmt: str, describe: str | None) -> None:
    """List the shipped experiment specs with their sizes.

    Sizes are samples x conditions x models = scoring jobs (staged specs: one term per
    stage; a later stage runs on its selection). Generation jobs are counted apart.

    \b
    Example:
        tracker experiments
        tracker experiments --format json
        tracker experiments --describe exp03
    """
    if describe is not None:
        click.echo(describe_spec(load_spec(describe)))
        return
    rows = []
    for spec in list_specs():
        size = spec.size(samples_per_dataset=_bundled_counts(spec))
        rows.append([
            spec.name, ", ".join(f"{d.key}:{d.n or 'all'}" for d in spec.datasets), len(spec.conditions),
            ", ".join(m.name for m in spec.models), ", ".join(spec.modes), size_formula(spec),
            size.score_jobs, size.generate_jobs, spec.title,
        ])
    columns = ["name", "datasets", "conditions", "models", "modes", "size", "score_jobs", "generate_jobs", "title"]
    click.echo(render_rows(columns, rows, fmt))


def describe_spec(spec: ExperimentSpec) -> str:
    """A spec in words: title, description, datasets with every loader choice, conditions, models, stages."""
    lines = [f"{spec.name}: {spec.title}", "", spec.description.strip(), "",
             "datasets (samples: the first n of a seeded order of the usable rows, a hash of seed and key, so "
             "--limit N takes the first N of the very samples a full run takes):"]
    for d in spec.datasets:
        info = DATASETS[d.name]
        recipe = build_recipe(d.name, d.split, d.recipe)
        shown = {k: v for k, v in recipe.items() if k not in ("loader", "dataset", "split")}
        lines.append(f"  {d.key} ({d.name}, split {recipe['split']}): n = {d.n or 'every usable row'}, seed {d.seed}"
                     + (f"; recipe {shown}" if shown else ""))
        lines += [f"    - {choice}" for choice in DATASET_CHOICES.get(d.name, (info.description,))]
        if d.name == "hotpot_qa":
            keep = not recipe.get("skip_yes_no", True)
            lines.append(f"    - this spec: yes/no questions {'kept' if keep else 'skipped'} (skip_yes_no: {not keep})")
    lines += ["", "conditions: " + ", ".join(c.name for c in spec.conditions),
              "models: " + ", ".join(m.name for m in spec.models) + f"; modes: {', '.join(spec.modes)}; "
              f"device: {spec.device}",
              "size: " + size_formula(spec)]
    for st in spec.stages:
        rule = f" on {st.select.as_dict()}" if st.select else ""
        lines.append(f"stage {st.number} ({st.name}){rule}: {', '.join(st.conditions)}")
    return "\n".join(lines)


def render_report(report: EnqueueReport) -> str:
    """The enqueue report as the CLI prints it."""
    head = f"{report.experiment}: run {report.run_id if report.run_id is not None else '(new)'}, spec {report.spec_hash[:10]}"
    if report.dry_run:
        head += "  [dry run: nothing written]"
    lines = [head, f"models: {', '.join(report.models)}; samples: {report.samples_total} "
                   f"({report.samples_created} new)"]
    rows = []
    for st in report.stages:
        rows.append([st.stage, st.name, st.score.created, st.score.reused, st.score.skipped,
                     st.generate.created, st.generate.reused, st.generate.skipped,
                     st.select.created + st.select.skipped or "", st.planned or "",
                     st.planned_new_max if st.planned else ""])
    lines.append(render_rows(
        ["stage", "name", "created", "reused", "skipped", "gen_created", "gen_reused", "gen_skipped",
         "selects", "planned", "planned_new_max"], rows))
    c = report.cost
    lines.append(f"new work: ~{c.score_tokens:,} tokens in {c.score_forward_passes:,} scoring forward passes "
                 f"({c.score_batched_passes:,} when batched per sample); generation ~{c.generate_tokens:,} tokens, "
                 f"at most {c.generate_forward_passes:,} forward passes")
    if any(st.planned for st in report.stages):
        p = report.planned_cost
        lines.append(f"planned (after selection, at most): ~{p.score_tokens:,} tokens in "
                     f"{p.score_forward_passes:,} scoring forward passes; generation ~{p.generate_tokens:,} "
                     f"tokens, {p.generate_forward_passes:,} forward passes; "
                     f"{sum(st.planned_generate_max for st in report.stages):,} generation jobs")
        lines.append("later stages are created by a worker once stage 1 of a dataset is done "
                     "(its select job); re-running enqueue never selects")
    for d in report.datasets:
        skipped = f", {d['skipped']} skipped by its filters (unanswerable, no usable doc, duplicates)" \
            if d["skipped"] else ""
        lines.append(f"dataset {d['dataset']}: {d['rows']} rows read, {d['usable']} usable{skipped}; "
                     f"{d['taken']} taken")
    lines.extend(f"Warning: {w}" for w in report.warnings)
    if not report.dry_run:
        lines.append(f"next: tracker worker --device cpu|--gpu N, then tracker status {report.experiment}")
    return "\n".join(lines)


@click.command("enqueue")
@click.argument("experiment")
@click.option("--model", "models", multiple=True, metavar="NAME",
              help="Score with this model instead of the spec's (repeatable).")
@limit_option
@click.option("--dry-run", is_flag=True, help="Count what would be created and reused; write nothing.")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None, metavar="DIR",
              help="Local copies of the datasets (default: $TRACKER_DATA_DIR, else the hub).")
@click.option("--device", type=click.Choice(["cpu", "cuda", "mps"]), default=None,
              help="Where the workers will run (picks the default dtype; default: the spec's).")
@click.option("--dtype", type=click.Choice(["float32", "bfloat16", "float16"]), default=None,
              help="Model dtype (default: bfloat16 on cuda, float32 on cpu).")
@db_option
def enqueue_cmd(experiment: str, models: tuple[str, ...], limit: int | dict[str, int] | None, dry_run: bool, data_dir: str | None,
                device: str | None, dtype: str | None, db: str | None) -> None:
    """Create the jobs of EXPERIMENT (a shipped spec name or a spec file), reusing existing ones.

    Prints per stage how many scoring and generation jobs were created, reused (they
    exist: done, or pending under another run) and skipped (already in this run), with an
    estimate of the new work. Running it twice creates nothing the second time.

    \b
    Example:
        tracker enqueue exp02 --dry-run
        tracker enqueue exp03 --limit 10 --model smollm2-135m --device cpu
        tracker enqueue exp03 --limit squad_v2=50 --limit 100
        tracker enqueue my/spec.yaml --data-dir ~/datasets
    """
    spec = load_spec(experiment)
    report = enqueue(spec, db=db, models=list(models) or None, limit=limit, dry_run=dry_run,
                     data_dir=data_dir, device=device, dtype=dtype, tokenizers=load_tokenizer)
    click.echo(render_report(report))


COMMANDS = [experiments_cmd, enqueue_cmd]
