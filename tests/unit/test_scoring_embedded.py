"""The embedded model cache: converted once per cache dir, atomically, under a file lock (no model loaded)."""
from __future__ import annotations

import json
import multiprocessing
import time
from pathlib import Path

import pytest

import workers.embedded as embedded
from tracker import settings


def fake_convert(calls_file: Path, delay: float = 0.5):
    """A stand-in for the 40 s GGUF conversion: slow, counted, writes what the real one writes."""

    def convert(target: Path, source: Path) -> None:
        with calls_file.open("a") as handle:
            handle.write("convert\n")
        (target / "config.json").write_text("{}")
        time.sleep(delay)
        (target / embedded.META_FILE).write_text(json.dumps({"gguf_sha256": "ab" * 32}))

    return convert


def _convert_in_child(cache_dir: str, calls_file: str, out: str) -> None:
    import os

    os.environ[settings.ENV_CACHE_DIR] = cache_dir
    embedded._convert_into = fake_convert(Path(calls_file))
    Path(out).write_text(str(embedded.ensure_converted()))


def test_two_processes_converting_at_once_convert_once(tmp_path, monkeypatch):
    cache, calls = tmp_path / "cache", tmp_path / "calls.txt"
    calls.touch()
    ctx = multiprocessing.get_context("fork")
    procs = [
        ctx.Process(target=_convert_in_child, args=(str(cache), str(calls), str(tmp_path / f"out{i}")))
        for i in range(2)
    ]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(60)
        assert proc.exitcode == 0
    assert calls.read_text().splitlines() == ["convert"]
    folders = {(tmp_path / f"out{i}").read_text() for i in range(2)}
    assert len(folders) == 1
    final = Path(folders.pop())
    assert (final / embedded.META_FILE).is_file() and (final / "config.json").is_file()
    assert [p.name for p in cache.iterdir() if p.name.startswith(".convert-")] == []


def test_a_failed_conversion_leaves_nothing_behind_and_is_retried(tmp_path, monkeypatch):
    monkeypatch.setenv(settings.ENV_CACHE_DIR, str(tmp_path))

    def broken(target: Path, source: Path) -> None:
        (target / "config.json").write_text("{}")
        raise RuntimeError("disk full")

    monkeypatch.setattr(embedded, "_convert_into", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        embedded.ensure_converted()
    assert not embedded.converted_dir().exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".convert-")] == []

    calls = tmp_path / "calls.txt"
    monkeypatch.setattr(embedded, "_convert_into", fake_convert(calls, delay=0))
    folder = embedded.ensure_converted()
    assert folder == embedded.converted_dir() and embedded.embedded_revision(folder) == "gguf-sha256:" + "ab" * 8
    assert embedded.ensure_converted() == folder
    assert calls.read_text().splitlines() == ["convert"]


def test_cache_dir_defaults_to_the_user_cache(monkeypatch):
    monkeypatch.delenv(settings.ENV_CACHE_DIR, raising=False)
    assert settings.model_cache_dir() == Path.home() / ".cache" / "tracker" / "models"
    assert embedded.gguf_path().name == "SmolLM2-135M-Instruct.Q4_1.gguf"
