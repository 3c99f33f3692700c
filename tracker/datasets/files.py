"""Reading rows: bundled files, local copies (the hub's own layout too), the hub itself; row checks.
"""
from __future__ import annotations

import json
import os
import re
import socket
from importlib import resources
from pathlib import Path
from typing import Any

from tracker import settings
from tracker.datasets.catalog import (
    ENV_DATA_DIR,
    HUB_HOST,
    LOCAL_SUFFIXES,
    ROW_FIELDS,
    DatasetInfo,
    get_dataset_info,
)
from tracker.errors import DatasetError

# --- reading rows ------------------------------------------------------------------------

def _split_files(root: Path, split: str, *, recursive: bool) -> list[Path]:
    """Files of ``split`` under ``root``: named ``<split>``, ``<split>-*``, ``<split>_*`` or ``<split>.*``,
    or inside a folder named ``<split>`` (hidden folders such as ``.cache`` skipped)."""
    found = []
    candidates = root.rglob("*") if recursive else [*root.iterdir(), *((root / split).iterdir()
                                                                       if (root / split).is_dir() else [])]
    for path in candidates:
        rel = path.relative_to(root)
        if not path.is_file() or not path.name.endswith(LOCAL_SUFFIXES) or any(p.startswith(".") for p in rel.parts):
            continue
        named = re.match(re.escape(split) + r"($|[-_.])", path.name) is not None
        if named or split in rel.parts[:-1]:
            found.append(path)
    return sorted(found)


def _config_folder(root: Path, config: str) -> Path | None:
    """The shallowest folder named ``config`` under ``root`` (the hub keeps a config's files in one)."""
    if (root / config).is_dir():
        return root / config
    matches = sorted((p for p in root.rglob(config) if p.is_dir()), key=lambda p: (len(p.parts), str(p)))
    return matches[0] if matches else None


def local_roots(data_dir: Path, info: DatasetInfo) -> list[Path]:
    """Where a dataset's local copy may be: ``DIR/<name>``, the hub repo ``DIR/<owner>/<repo>`` and ``DIR/<repo>``."""
    roots = [data_dir / info.name]
    if info.hub_id:
        roots += [data_dir / info.hub_id, data_dir / info.hub_id.split("/")[-1]]
    return list(dict.fromkeys(roots))


def find_local_files(data_dir: Path, info: DatasetInfo, split: str) -> list[Path]:
    """Local copies of one split: the first root of :func:`local_roots` that has files wins.

    In a root, a dataset with a config (MS MARCO ``v1.1``, TriviaQA ``rc.wikipedia``,
    HotpotQA ``distractor``) is read from the folder named after the config, at any depth,
    searched recursively; a dataset without one (SQuAD 2.0 keeps its files in ``squad_v2/``,
    neural-bridge in ``data/``) from the whole root, recursively. Files belong to the split
    by name (``validation.jsonl``, ``validation-00000-of-00001.parquet``) or by a folder
    named after it. Without the config folder, only the root's own files (and ``<split>/``)
    count, so one config's files are never read as another's.
    """
    for root in local_roots(data_dir, info):
        if not root.is_dir():
            continue
        if info.config:
            folder = _config_folder(root, info.config)
            files = (_split_files(folder, split, recursive=True) if folder is not None
                     else _split_files(root, split, recursive=False))
        else:
            files = _split_files(root, split, recursive=True)
        if files:
            return files
    return []


def read_local_file(path: Path) -> list[dict[str, Any]]:
    """Rows of one parquet, JSON-lines or JSON (a list of rows) file."""
    return [row for _, row in read_local_rows(path)]


def read_local_rows(path: Path) -> list[tuple[str, Any]]:
    """(where, row) of one parquet, JSON-lines or JSON file; ``where`` names the line / row for errors.

    Bytes that are not UTF-8 and lines that are not JSON are :class:`DatasetError` naming the line.
    """
    if path.name.endswith(".parquet"):
        import pyarrow.parquet as pq

        try:
            rows = pq.read_table(path).to_pylist()
        except Exception as err:  # noqa: BLE001 - pyarrow raises several types for a broken file
            raise DatasetError(f"{path} is not a readable parquet file: {err}",
                               hint="download the file again") from err
        return [(f"row {i + 1}", row) for i, row in enumerate(rows)]
    data = path.read_bytes()
    lines = data.split(b"\n")
    for number, raw in enumerate(lines, start=1):
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise DatasetError(f"{path} line {number}: bytes that are not UTF-8 (at byte {err.start} of the line).",
                               hint="re-encode the file as UTF-8 (or remove the row)") from err
    text = data.decode("utf-8")
    if path.name.endswith(".json") and text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as err:
            raise DatasetError(f"{path} line {err.lineno}: not valid JSON ({err.msg}).",
                               hint="fix the file, or write one JSON object per line (.jsonl)") from err
        return [(f"item {i + 1}", row) for i, row in enumerate(items)]
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append((f"line {number}", json.loads(line)))
        except json.JSONDecodeError as err:
            raise DatasetError(f"{path} line {number}: not JSON ({err.msg}).",
                               hint="write one JSON object per line") from err
    return rows


_TYPE_WORDS = {"str": "a string", "list": "a list", "object": "an object", "key": "a string or an integer"}


def _type_word(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    for kind, word in ((str, "a string"), (list, "a list"), (dict, "an object"), (int, "an integer"),
                       (float, "a number")):
        if isinstance(value, kind):
            return word
    return type(value).__name__


def check_row(name: str, row: Any, where: str) -> None:
    """Raise :class:`DatasetError` when ``row`` does not have the shape of ``name``'s rows (:data:`ROW_FIELDS`).

    ``where`` says which file and line, for the message.
    """
    if not isinstance(row, dict):
        raise DatasetError(f"{where}: the row is {_type_word(row)}, not an object.",
                           hint=f"each row of {name} is one JSON object with the hub's fields")
    for field_name, kind in ROW_FIELDS.get(name, {}).items():
        parent, _, child = field_name.rpartition(".")
        holder = row.get(parent) if parent else row
        if parent and not isinstance(holder, dict):
            continue  # the parent is null or missing (or was reported itself)
        value = holder.get(child) if child else None
        if kind == "key":
            if value is None or (isinstance(value, str) and not value.strip()) or isinstance(value, bool) \
                    or not isinstance(value, (str, int)):
                what = "missing" if value is None else f"{_type_word(value)}"
                raise DatasetError(f"{where}: field `{field_name}` is {what}; every {name} row needs it as its key.",
                                   hint=f"fix or remove that row (fields of a {name} row: "
                                        f"{', '.join(ROW_FIELDS[name])})")
            continue
        expected = {"str": str, "list": list, "object": dict}[kind]
        if value is not None and not isinstance(value, expected):
            shown = repr(value) if isinstance(value, (str, int, float)) and len(repr(value)) < 40 else ""
            raise DatasetError(
                f"{where}: field `{field_name}` is {_type_word(value)}{f' ({shown})' if shown else ''}, "
                f"expected {_TYPE_WORDS[kind]}.",
                hint=f"fix or remove that row (fields of a {name} row: "
                     + ", ".join(f"{k}: {_TYPE_WORDS[v]}" for k, v in ROW_FIELDS[name].items()) + ")",
            )


def hub_reachable(timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection((HUB_HOST, 443), timeout=timeout):
            return True
    except OSError:
        return False


def _offline_error(info: DatasetInfo, split: str, data_dir: Path | None, why: str) -> DatasetError:
    where = f"{data_dir}/{info.name}/{split}.parquet (or .jsonl)" if data_dir else f"DIR/{info.name}/{split}.jsonl"
    return DatasetError(
        f"Cannot load dataset {info.name} ({info.hub_id}, split {split}): {why}.",
        hint=f"download it where the hub is reachable and pass --data-dir DIR (or set {ENV_DATA_DIR}) "
             f"with a local copy at {where}, same fields as the hub rows",
    )


def load_hub_rows(info: DatasetInfo, split: str) -> list[dict[str, Any]]:
    """Rows from the hub (or its local cache when HF_HUB_OFFLINE / HF_DATASETS_OFFLINE is set)."""
    if not settings.datasets_offline() and not hub_reachable():
        raise _offline_error(info, split, None, f"{HUB_HOST} is not reachable")
    import datasets

    try:
        ds = datasets.load_dataset(info.hub_id, info.config, split=split)
    except Exception as err:  # noqa: BLE001 - any hub/cache failure means "no data here"
        raise _offline_error(info, split, None, f"{type(err).__name__}: {err}") from err
    return [dict(r) for r in ds]


def load_raw_rows(name: str, split: str | None = None, data_dir: str | os.PathLike[str] | None = None) -> list[dict]:
    """All raw rows of one split: bundled (tinyqa), local copy (data dir) or hub."""
    info = get_dataset_info(name)
    split = split or info.default_split
    if info.hub_id is None:
        text = resources.files("tracker.data").joinpath(f"{name}.jsonl").read_text(encoding="utf-8")
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    root = settings.data_dir(data_dir)
    if root is not None:
        files = find_local_files(root, info, split)
        if not files:
            raise _offline_error(info, split, root, f"no local copy under {root}")
        rows = []
        for path in files:
            for where, row in read_local_rows(path):
                check_row(name, row, f"{path} {where}")
                rows.append(row)
        return rows
    return load_hub_rows(info, split)
