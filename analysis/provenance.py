"""Where an analysis came from: code and package versions, the database, the inputs' fingerprint.

The same record goes into MLflow (as tags) and into ``--out`` (``provenance.json``), and
:func:`input_fingerprint` over it decides whether re-analysing adds an MLflow run.
"""
from __future__ import annotations

import functools
import hashlib
import json
import re
import subprocess
from importlib import metadata
from pathlib import Path

import pandas as pd
from sqlalchemy.engine import make_url

from analysis.report_data import ReportData

PACKAGES = ("numpy", "scipy", "pandas", "statsmodels", "sqlalchemy", "matplotlib", "mlflow")
PACKAGE_DIR = Path(__file__).resolve().parent


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The checkout's commit (one ``git rev-parse``), or None for an installed package."""
    try:
        out = subprocess.run(
            ["git", "-C", str(PACKAGE_DIR), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip()
    return commit if out.returncode == 0 and re.fullmatch(r"[0-9a-f]{40}", commit) else None


@functools.lru_cache(maxsize=1)
def analysis_version() -> str:
    """Content hash of the analysis code (every ``analysis/*.py``): changes whenever a statistic could."""
    digest = hashlib.sha256()
    for path in sorted(PACKAGE_DIR.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def package_versions() -> dict[str, str]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def absolute_db_url(db_url: str) -> str:
    """The database URL with the password hidden and a relative SQLite path made absolute."""
    url = make_url(db_url)
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:") \
            and not url.database.startswith("file:"):
        url = url.set(database=str(Path(url.database).expanduser().resolve()))
    return url.render_as_string(hide_password=True)


def score_digest(results: pd.DataFrame) -> str:
    """Hash of the scored (score id, NLL) pairs: which scores an analysis read, order-free."""
    scored = results.loc[results["nll"].notna(), ["score_id", "nll"]]
    pairs = sorted((int(s), float(v)) for s, v in zip(scored["score_id"], scored["nll"]) if pd.notna(s))
    return hashlib.sha256(json.dumps(pairs).encode()).hexdigest()[:16]


def provenance(report: ReportData, db_url: str | None = None, *, spec_hash: str | None = None) -> dict:
    """Code, package and input versions of one analysis, JSON-ready."""
    from tracker.version import __version__

    info = report.info
    return {
        "experiment": report.experiment,
        "run_id": report.run_id,
        "tracker_version": __version__,
        "git_commit": git_commit(),
        "analysis_version": analysis_version(),
        "packages": package_versions(),
        "db_url": absolute_db_url(db_url) if db_url else None,
        "spec_hash": spec_hash,
        "scorer_versions": dict(info.get("scorer_versions", {})),
        "inputs": {
            "n_scores": info.get("n_scores"),
            "scores_sha256": info.get("scores_sha256"),
            "bootstrap": info.get("bootstrap"),
            "seed": info.get("seed"),
            "plan_sha256": hashlib.sha256(json.dumps(info.get("plan", {}), sort_keys=True, default=str).encode())
            .hexdigest()[:16],
        },
    }


# What the fingerprint covers, each with the words a "what changed" line uses for it.
FINGERPRINT_PARTS = {
    "run_id": "tracker run",
    "spec_hash": "spec hash",
    "scorer_versions": "scorer versions",
    "analysis_version": "analysis code",
    "inputs.n_scores": "scores analysed",
    "inputs.scores_sha256": "score set",
    "inputs.bootstrap": "bootstrap resamples",
    "inputs.seed": "bootstrap seed",
    "inputs.plan_sha256": "analysis plan",
}


def fingerprint_parts(record: dict) -> dict[str, str]:
    """The fingerprinted fields of a :func:`provenance` record, as strings (MLflow tag values)."""
    parts = {}
    for key in FINGERPRINT_PARTS:
        value = record
        for step in key.split("."):
            value = value.get(step) if isinstance(value, dict) else None
        parts[key] = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return parts


def input_fingerprint(record: dict) -> str:
    """One hash of everything that can change an analysis' numbers (not the package versions)."""
    return hashlib.sha256(json.dumps(fingerprint_parts(record), sort_keys=True).encode()).hexdigest()[:24]


def describe_changes(old: dict[str, str], new: dict[str, str]) -> list[str]:
    """"spec hash: a -> b" for each fingerprinted field that differs between two runs' parts."""
    lines = []
    for key, label in FINGERPRINT_PARTS.items():
        if old.get(key) != new.get(key):
            lines.append(f"{label}: {old.get(key, '(not recorded)')} -> {new.get(key)}")
    return lines
