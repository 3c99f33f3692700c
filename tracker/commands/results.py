"""``tracker export``, ``tracker show`` and ``tracker compare``: scores out of the database, one sample
up close, two sides of an experiment against each other. Thin: parse, call :mod:`tracker.api`, render."""
from __future__ import annotations

import json
import math

import click

from tracker import api
from tracker.commands.options import db_option, run_option
from tracker.render import format_option, render_frame, render_rows


@click.command("export")
@click.argument("experiment")
@click.option("--format", "fmt", type=click.Choice(api.EXPORT_FORMATS), default=None,
              help="File format (default: from the --output suffix).")
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False), metavar="FILE",
              help="Where to write (parquet, csv or jsonl).")
@run_option
@click.option("--text", is_flag=True, help="Add the decoded prefix, doc, query and answer (the model's tokenizer).")
@click.option("--tokens", is_flag=True, help="One row per answer token (position, token_id, nll) instead of per score.")
@db_option
def export_cmd(experiment: str, fmt: str | None, output: str, run: str | None, text: bool, tokens: bool,
               db: str | None) -> None:
    """Write EXPERIMENT's scores to a file: one row per score with the dataset's key, condition, model,
    mode, dtype, device, scorer version, model revision, run id, spec hash, nll and n_tokens.

    Provenance (tracker version, git commit, package versions, spec hash, database) goes into
    the parquet file's metadata (key `tracker.provenance`), or beside a csv/jsonl file as
    FILE.provenance.json.

    \b
    Example:
        tracker export demo --output demo.parquet
        tracker export demo --format csv --output demo.csv --text
        tracker export demo --output tokens.jsonl --tokens --text --run 2
    """
    result = api.export(experiment, output, format=fmt, db=db, run=run, text=text, tokens=tokens)
    where = result.provenance_path or f"{result.path} (parquet metadata `tracker.provenance`)"
    runs = ", ".join(map(str, result.provenance["runs"])) or "none"
    click.echo(f"{result.rows} {'token' if tokens else 'score'} rows of {experiment} (run {runs}) written to "
               f"{result.path}; provenance in {where}", err=True)


@click.command("show")
@click.argument("experiment")
@click.argument("sample")
@click.option("--dataset", default=None, help="The dataset, when the key is in several.")
@run_option
@db_option
def show_cmd(experiment: str, sample: str, dataset: str | None, run: str | None, db: str | None) -> None:
    """One sample of EXPERIMENT: doc, query, answer, each condition's prefix and NLL, and the answer
    tokens with their NLL under each condition side by side.

    SAMPLE is the dataset's own key (`tq027`, an MS MARCO query id) or `#ID` for a database id.
    Texts are decoded from the token ids the score stored, with the model's tokenizer.

    \b
    Example:
        tracker show demo tq027
        tracker show exp03 '#412'
        tracker show exp03 56789 --dataset ms_marco
    """
    view = api.show(experiment, sample, db=db, run=run, dataset=dataset)
    click.echo(render_sample(view))


def _one_line(text: str | None, limit: int = 160) -> str:
    if not isinstance(text, str):
        return "(no text)"
    flat = text.replace("\n", "\\n")
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def render_sample(view: api.SampleView) -> str:
    s = view.sample
    lines = [f"{view.experiment} run {view.run_id}: sample #{s['sample_id']} {s['dataset']}/{s['source_key']}"
             + (f" ({s['split']})" if s.get("split") else ""),
             "", "doc:", s["doc"], "", f"query:  {s['query']}", f"answer: {s['answer']}", ""]
    cond = view.conditions
    if cond.empty:
        lines.append("(no scores yet)")
        return "\n".join(lines)
    rows = [[r.model, r.mode, r.condition, r.nll, r.n_tokens,
             "(none)" if not isinstance(r.prefix_text, str) and r.condition == "bare" else _one_line(r.prefix_text)]
            for r in cond.sort_values(["model", "mode", "nll"]).itertuples()]
    lines.append(render_rows(["model", "mode", "condition", "nll", "n_tokens", "prefix (decoded)"], rows))
    for (model, mode), table in view.tokens.items():
        lines += ["", f"answer tokens, NLL per condition ({model}, {mode}):"]
        shown = table.copy()
        shown["token"] = [repr(t) if t is not None else "?" for t in shown["token"]]
        lines.append(render_frame(shown))
    return "\n".join(lines)


@click.command("compare")
@click.argument("experiment")
@click.option("--by", "by", type=click.Choice(["run", "scorer_version", "dtype", "model"]), required=True,
              help="What differs between the two sides.")
@click.option("--a", "side_a", default=None, metavar="VALUE", help="Side A (default: the older of exactly two).")
@click.option("--b", "side_b", default=None, metavar="VALUE", help="Side B.")
@click.option("--run", "run_id", type=int, default=None, help="Restrict a split other than --by run to one run.")
@click.option("--reference", default="bare", show_default=True, help="The condition deltas are taken against.")
@format_option()
@click.option("--figure", type=click.Path(dir_okay=False), default=None, metavar="FILE",
              help="Also draw d(A) against d(B), sign flips marked (.png, .pdf or .svg).")
@db_option
def compare_cmd(experiment: str, by: str, side_a: str | None, side_b: str | None, run_id: int | None,
                reference: str, fmt: str, figure: str | None, db: str | None) -> None:
    """Compare two sides of EXPERIMENT effect by effect over the samples both share: two runs, two
    scorer versions, two dtypes (a bf16 run against an fp32 rescoring) or two models.

    d is computed exactly as `tracker analyze` computes it; a conclusion whose sign flips
    is marked FLIP.

    \b
    Example:
        tracker compare exp02 --by scorer_version
        tracker compare demo --by run --a 1 --b 2 --format json
        tracker compare exp01 --by dtype --a bfloat16 --b float32 --figure dtype.png
    """
    table = api.compare(experiment, by=by, a=side_a, b=side_b, db=db, run=run_id, reference=reference)
    attrs = dict(table.attrs)
    if figure:
        from analysis.compare import compare_figure

        compare_figure(table, label_a=f"{by} {attrs['a']}", label_b=f"{by} {attrs['b']}").savefig(figure)
    if fmt == "json":
        from analysis.report_data import frame_records

        click.echo(json.dumps({"experiment": experiment, "by": by, "a": attrs["a"], "b": attrs["b"],
                               "reference": reference, "rows": frame_records(table)}, allow_nan=False))
        return
    if fmt == "csv":
        click.echo(render_frame(table, "csv"))
        return
    flips = table[table["sign_flip"]]
    shown = table.copy()
    shown["sign_flip"] = ["FLIP" if f else "" for f in shown["sign_flip"]]
    for col in ("d_a", "d_b", "d_diff", "mean_delta_a", "mean_delta_b", "delta_corr"):
        shown[col] = [None if v is None or (isinstance(v, float) and math.isnan(v)) else round(float(v), 3)
                      for v in shown[col]]
    click.echo(f"{experiment}: {by} A = {attrs['a']} vs B = {attrs['b']} (delta = NLL({reference}) - NLL(C); "
               "d_diff = d_b - d_a)")
    click.echo(render_frame(shown))
    if len(flips):
        listed = ", ".join(f"{r.condition} ({r.dataset}: {r.d_a:+.3f} -> {r.d_b:+.3f})" for r in flips.itertuples())
        click.echo(f"\n{len(flips)} of {len(table)} effects flip sign between A and B: {listed}")
    else:
        click.echo(f"\nno effect flips sign ({len(table)} compared)")
    if figure:
        click.echo(f"figure written to {figure}", err=True)


COMMANDS = [export_cmd, show_cmd, compare_cmd]
