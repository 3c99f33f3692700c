"""The tracker as a user installs it: a built wheel (not the source tree) migrates and answers SQL."""
from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def installed_site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out), str(ROOT)],
                   check=True, capture_output=True)
    wheel = next(out.glob("tracker-*.whl"))
    site = out / "site"
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(site)
    assert (site / "migrations" / "versions").is_dir()
    return site


def _tracker(site: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    code = "import sys; from tracker.cli import main; sys.argv = ['tracker'] + sys.argv[1:]; main()"
    env = {"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin", "HOME": str(cwd)}
    return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, env=env, capture_output=True, text=True)


def test_wheel_upgrade_then_empty_results_on_sqlite(installed_site, tmp_path):
    up = _tracker(installed_site, tmp_path, "db", "upgrade")
    assert up.returncode == 0, up.stderr
    where = subprocess.run([sys.executable, "-c", "import tracker, migrations; print(tracker.__file__); print(migrations.__file__)"],
                           env={"PYTHONPATH": str(installed_site)}, cwd=tmp_path, capture_output=True, text=True)
    assert all(line.startswith(str(installed_site)) for line in where.stdout.split()), where.stdout
    out = _tracker(installed_site, tmp_path, "sql", "select * from results", "--format", "json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == []
    assert (tmp_path / "tracker.db").exists()


@pytest.mark.postgres
def test_wheel_upgrade_then_empty_results_on_postgres(installed_site, pg_empty_url, tmp_path):
    refused = _tracker(installed_site, tmp_path, "--db", pg_empty_url, "sql", "select 1")
    assert refused.returncode == 1 and "tracker db upgrade" in refused.stderr
    up = _tracker(installed_site, tmp_path, "--db", pg_empty_url, "db", "upgrade")
    assert up.returncode == 0, up.stderr
    out = _tracker(installed_site, tmp_path, "--db", pg_empty_url, "sql", "select * from results", "--format", "json")
    assert out.returncode == 0, out.stderr
    assert out.stdout == "[]\n"
