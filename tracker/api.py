"""The Python API for notebooks: results, token NLLs, analyses, comparisons and exports as DataFrames.

Exposed lazily from :mod:`tracker` (``tracker.results(...)``); this module is a
composition root like the CLI, so it may use ``analysis`` and ``workers`` (token text is
decoded with the scored model's own tokenizer). ``db=None`` resolves exactly like
``--db``: ``$TRACKER_DB``, else ``./tracker.db``; a SQLite file path works too.

``run``: None = the experiment's latest run, an id = that run, ``"all"`` = every run.
"""
from __future__ import annotations

import json
import platform
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from sqlalchemy import Engine

from tracker.errors import AmbiguousSampleError, ConfigError

INSTALL_ROOT = Path(__file__).resolve().parents[1]  # the folder holding tracker/, analysis/ and workers/


def _own_packages() -> None:
    """Import our ``analysis`` and ``workers`` packages from where ``tracker`` is installed.

    Both are top-level names, and a notebook's folder (first on ``sys.path``) often has an
    ``analysis/`` of its own; the install folder is put first for these two imports only, and
    their submodules then load through the packages' own paths.
    """
    for name in ("analysis", "workers"):
        loaded = sys.modules.get(name)
        if loaded is not None:
            where = Path(getattr(loaded, "__file__", "") or ".").resolve().parent.parent
            if where != INSTALL_ROOT:
                raise ConfigError(
                    f"A module named {name!r} from {where} is already imported, so tracker cannot load its own "
                    f"{name} package (from {INSTALL_ROOT}).",
                    hint=f"import tracker before your own {name!r} module, or rename that module",
                )
            continue
        sys.path.insert(0, str(INSTALL_ROOT))
        try:
            if name == "analysis":
                import analysis  # noqa: F401
            else:
                import workers  # noqa: F401
        finally:
            sys.path.remove(str(INSTALL_ROOT))


_own_packages()

EXPORT_FORMATS = ("parquet", "csv", "jsonl")
PROVENANCE_KEY = b"tracker.provenance"
SEGMENTS = ("prefix", "doc", "query", "answer")
EXPORT_COLUMNS = [
    "experiment", "run_id", "spec_hash", "dataset", "source_key", "sample_id", "condition", "model",
    "model_revision", "mode", "dtype", "device", "scorer_version", "nll", "n_tokens", "score_id", "job_id",
]


def _engine(db: str | None) -> tuple[Engine, str]:
    from tracker.db import get_engine
    from tracker.settings import resolve_db_url

    url = resolve_db_url(db)
    return get_engine(url, create=False), url


# --------------------------------------------------------------------------- rows
def results(experiment: str, *, db: str | None = None, run: int | str | None = None) -> pd.DataFrame:
    """One row per experiment run x scoring job (``nll`` NaN until scored).

    The ``results`` view's columns plus ``source_key`` (the dataset's own key), ``spec_hash``,
    ``model_revision`` and the ``dtype`` / ``device`` the score ran with.
    """
    from analysis.scores import load_result_rows

    engine, _ = _engine(db)
    return load_result_rows(engine, experiment, run)


def token_nlls(experiment: str, *, db: str | None = None, run: int | str | None = None,
               text: bool = False) -> pd.DataFrame:
    """One row per answer token per score (long format); ``text=True`` adds ``token`` (the decoded token)."""
    from analysis.scores import load_token_rows

    engine, _ = _engine(db)
    frame = load_token_rows(engine, experiment, run)
    if text:
        frame["token"] = decode_tokens(frame["model"], frame["token_id"])
    return frame


# --------------------------------------------------------------------------- decoding
_NO_TOKENIZER = object()
_decoders: dict[str, Any] = {}


def tokenizer_for(model: str) -> Any:
    """The scored model's tokenizer, or None for a model that has none (the ``test-fake`` backend)."""
    if model not in _decoders:
        from tracker.catalogue import resolve_model
        from workers.tokenizers import load_tokenizer

        entry = resolve_model(model)
        _decoders[model] = _NO_TOKENIZER if entry.source == "fake" else load_tokenizer(model)
    found = _decoders[model]
    return None if found is _NO_TOKENIZER else found


def decode_ids(model: str, ids: Sequence[int] | None) -> str | None:
    """``ids`` decoded with ``model``'s tokenizer, special tokens kept (None: no ids, or no tokenizer)."""
    if ids is None:
        return None
    tokenizer = tokenizer_for(model)
    if tokenizer is None:
        return None
    return tokenizer.decode([int(i) for i in ids], skip_special_tokens=False, clean_up_tokenization_spaces=False)


def decode_tokens(models: Sequence[str], token_ids: Sequence[int]) -> list[str | None]:
    """Each token id decoded alone with its row's model's tokenizer."""
    cache: dict[tuple[str, int], str | None] = {}
    out = []
    for model, token in zip(models, token_ids):
        key = (model, int(token))
        if key not in cache:
            cache[key] = decode_ids(model, [key[1]])
        out.append(cache[key])
    return out


def _ids(value: Any) -> list[int] | None:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return None
    if isinstance(value, str):  # JSON columns come back as text through a plain SELECT on SQLite
        value = json.loads(value)
    return None if value is None else [int(v) for v in value]


def segment_texts(engine: Engine, frame: pd.DataFrame) -> pd.DataFrame:
    """``prefix_text, doc_text, query_text, answer_text`` for each row of ``frame`` (needs ``score_id``, ``model``),
    decoded from the token ids the score stored (what the model saw)."""
    from analysis.scores import load_segments

    ids = [int(s) for s in frame["score_id"].dropna().unique()]
    segments = load_segments(engine, ids).set_index("score_id")
    cache: dict[tuple, str | None] = {}
    columns: dict[str, list] = {f"{seg}_text": [] for seg in SEGMENTS}
    for score_id, model in zip(frame["score_id"], frame["model"]):
        row = segments.loc[int(score_id)] if pd.notna(score_id) else None
        for seg in SEGMENTS:
            value = None if row is None else _ids(row[f"{seg}_ids"])
            key = (model, seg, tuple(value) if value is not None else None)
            if key not in cache:
                cache[key] = decode_ids(model, value)
            columns[f"{seg}_text"].append(cache[key])
    return pd.DataFrame(columns, index=frame.index)


# --------------------------------------------------------------------------- analysis
def analyze(experiment: str, *, db: str | None = None, run: int | None = None, mlflow: bool = False,
            mlflow_uri: str | None = None, out: str | Path | None = None, bootstrap: int = 1000, seed: int = 0):
    """The report of ``tracker analyze`` (``.effects``, ``.tables``, ``.frames()``, ``.render_text()``).

    ``mlflow=True`` logs it as ``tracker analyze`` does; the report's ``.mlflow`` is then the MLflow run
    (``run_id``, ``experiment_id``, ``created``: False when the inputs were unchanged), else None.
    """
    from analysis.from_spec import analyze_spec
    from tracker.specs import load_spec

    engine, url = _engine(db)
    spec = load_spec(experiment)
    result = analyze_spec(engine, url, spec, run_id=run, mlflow=mlflow, mlflow_uri=mlflow_uri, out=out,
                          bootstrap=bootstrap, seed=seed)
    report = result.report
    report.mlflow = result.mlflow
    return report


def compare(experiment: str, *, by: str = "run", a: str | None = None, b: str | None = None,
            db: str | None = None, run: int | None = None, reference: str = "bare") -> pd.DataFrame:
    """Two sides of one experiment effect by effect (``by``: run, scorer_version, dtype or model).

    Columns ``model, mode, dataset, condition, reference, n, d_a, d_b, d_diff, mean_delta_a,
    mean_delta_b, delta_corr, mark_a, mark_b, sign_flip``; ``attrs`` name the sides.
    """
    from analysis.compare import compare_experiment

    engine, _ = _engine(db)
    return compare_experiment(engine, experiment, by=by, a=a, b=b, reference=reference, run_id=run)


# --------------------------------------------------------------------------- export
def export_frame(experiment: str, *, db: str | None = None, run: int | str | None = None, text: bool = False,
                 tokens: bool = False) -> pd.DataFrame:
    """The rows ``tracker export`` writes: one per score (``tokens``: one per answer token)."""
    from analysis.scores import load_result_rows, load_token_rows

    engine, _ = _engine(db)
    if tokens:
        frame = load_token_rows(engine, experiment, run)
        if text:
            frame["token"] = decode_tokens(frame["model"], frame["token_id"])
        return frame
    frame = load_result_rows(engine, experiment, run, scored_only=True)[EXPORT_COLUMNS].reset_index(drop=True)
    if text:
        frame = pd.concat([frame, segment_texts(engine, frame)], axis=1)
    return frame


def export_provenance(experiment: str, frame: pd.DataFrame, db_url: str, *, run: int | str | None,
                      tokens: bool, text: bool) -> dict:
    """Where an export came from: tracker version, git commit, package versions, database, runs and spec hashes."""
    from importlib import metadata

    from analysis.provenance import absolute_db_url, git_commit, package_versions
    from tracker.version import __version__

    packages = package_versions()
    for name in ("pyarrow", "transformers", "tokenizers"):
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            packages[name] = "not installed"
    spec_hashes = sorted(set(frame["spec_hash"])) if "spec_hash" in frame else None
    return {
        "experiment": experiment,
        "runs": sorted(int(r) for r in frame["run_id"].unique()) if len(frame) else [],
        "run_selector": "latest" if run is None else str(run),
        "spec_hashes": spec_hashes,
        "scorer_versions": sorted(set(frame["scorer_version"])) if len(frame) else [],
        "rows": int(len(frame)),
        "kind": "tokens" if tokens else "scores",
        "text": bool(text),
        "tracker_version": __version__,
        "git_commit": git_commit(),
        "python": platform.python_version(),
        "packages": packages,
        "db_url": absolute_db_url(db_url),
    }


@dataclass
class ExportResult:
    path: Path
    rows: int
    provenance: dict
    provenance_path: Path | None = None  # the sidecar of csv/jsonl; parquet keeps it in its metadata
    columns: list[str] = field(default_factory=list)


def export_format(path: str | Path, fmt: str | None) -> str:
    """``fmt``, else the format the file name's suffix says."""
    if fmt is not None:
        if fmt not in EXPORT_FORMATS:
            raise ConfigError(f"Unknown export format {fmt!r}.", hint=f"--format one of: {', '.join(EXPORT_FORMATS)}")
        return fmt
    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix in EXPORT_FORMATS:
        return suffix
    raise ConfigError(f"Cannot tell the export format of {path}.",
                      hint=f"pass --format {'|'.join(EXPORT_FORMATS)} or end the file name in .parquet, .csv or .jsonl")


def export(experiment: str, output: str | Path, *, format: str | None = None, db: str | None = None,
           run: int | str | None = None, text: bool = False, tokens: bool = False) -> ExportResult:
    """Write ``export_frame(...)`` to ``output``: parquet (provenance in the file's metadata under
    ``tracker.provenance``), csv or jsonl (provenance in ``OUTPUT.provenance.json``)."""
    fmt = export_format(output, format)
    _, url = _engine(db)
    frame = export_frame(experiment, db=db, run=run, text=text, tokens=tokens)
    record = export_provenance(experiment, frame, url, run=run, tokens=tokens, text=text)
    path = Path(output)
    if path.parent and not path.parent.is_dir():
        raise ConfigError(f"No folder {path.parent} to write {path.name} in.", hint="create it, or pick another --output")
    sidecar = None
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.Table.from_pandas(frame, preserve_index=False)
        metadata = dict(table.schema.metadata or {})
        metadata[PROVENANCE_KEY] = json.dumps(record, sort_keys=True).encode()
        pq.write_table(table.replace_schema_metadata(metadata), path)
    else:
        if fmt == "csv":
            frame.to_csv(path, index=False)
        else:
            _write_jsonl(frame, path)
        sidecar = path.with_name(path.name + ".provenance.json")
        sidecar.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return ExportResult(path, int(len(frame)), record, sidecar, [str(c) for c in frame.columns])


def _write_jsonl(frame: pd.DataFrame, path: Path) -> None:
    """One JSON object per row; floats written exactly (shortest repr), missing values as null."""
    from analysis.report_data import frame_records

    with path.open("w", encoding="utf-8") as out:
        for record in frame_records(frame):
            out.write(json.dumps(record, ensure_ascii=False, allow_nan=False) + "\n")


def read_provenance(path: str | Path) -> dict:
    """The provenance record of an export (parquet metadata, or the csv/jsonl sidecar)."""
    path = Path(path)
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return json.loads(pq.read_schema(path).metadata[PROVENANCE_KEY])
    return json.loads(path.with_name(path.name + ".provenance.json").read_text())


# --------------------------------------------------------------------------- one sample
@dataclass
class SampleView:
    """One sample of a run: its texts, each condition's prefix and NLL, the answer tokens' NLLs side by side."""

    experiment: str
    run_id: int
    sample: dict
    conditions: pd.DataFrame  # model, mode, condition, nll, n_tokens, prefix_text, score_id
    tokens: dict[tuple[str, str], pd.DataFrame]  # (model, mode) -> position, token_id, token, <condition>...


def show(experiment: str, sample: str, *, db: str | None = None, run: int | None = None,
         dataset: str | None = None) -> SampleView:
    """One sample (its dataset key, or ``#ID``): see :class:`SampleView`."""
    from analysis.scores import find_samples, load_result_rows, load_token_rows

    engine, _ = _engine(db)
    found = find_samples(engine, experiment, sample, run, dataset=dataset)
    if len(found) > 1:
        listing = "; ".join(f"#{r.sample_id} {r.dataset} (recipe {r.recipe_hash[:8]})" for r in found.itertuples())
        raise AmbiguousSampleError(
            f"{len(found)} samples of experiment {experiment!r} have the key {sample}: {listing}.",
            hint=f"pick one with --dataset NAME or by id, e.g. `tracker show {experiment} '#{found.iloc[0].sample_id}'`",
        )
    chosen = found.iloc[0].to_dict()
    sample_id = int(chosen["sample_id"])
    rows = load_result_rows(engine, experiment, run, scored_only=True)
    rows = rows[rows["sample_id"] == sample_id].reset_index(drop=True)
    run_id = int(rows["run_id"].iloc[0]) if len(rows) else int(load_result_rows(engine, experiment, run)["run_id"].iloc[0])
    texts = segment_texts(engine, rows) if len(rows) else pd.DataFrame(columns=[f"{s}_text" for s in SEGMENTS])
    conditions = pd.concat([rows[["model", "mode", "condition", "nll", "n_tokens", "score_id"]], texts], axis=1)
    token_rows = load_token_rows(engine, experiment, run, sample_ids=[sample_id])
    tokens = {}
    for (model, mode), group in token_rows.groupby(["model", "mode"], sort=True):
        wide = group.pivot_table(index=["position", "token_id"], columns="condition", values="nll", aggfunc="first")
        wide = wide.reset_index()
        wide.insert(2, "token", decode_tokens([model] * len(wide), wide["token_id"]))
        wide.columns.name = None
        tokens[(model, mode)] = wide
    sample_info = {k: chosen[k] for k in ("sample_id", "dataset", "source_key", "split", "doc", "query", "answer")}
    return SampleView(experiment, run_id, sample_info, conditions, tokens)


__all__ = [
    "ExportResult", "SampleView", "analyze", "compare", "decode_ids", "export", "export_frame", "read_provenance",
    "results", "show", "token_nlls",
]
