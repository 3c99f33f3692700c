"""One renderer for tabular output (table, csv, json) and the click option that selects it.

NULL and NaN stay apart: JSON writes NULL as ``null`` and a non-finite float as the
string ``"NaN"`` / ``"Infinity"`` / ``"-Infinity"`` (JSON has no NaN); CSV writes NULL as
an empty field and the same three words for non-finite floats.
"""
from __future__ import annotations

import csv
import io
import json
import math
import shutil
import sys
from collections.abc import Iterable, Sequence
from datetime import date, datetime
from decimal import Decimal
from typing import Any, TextIO

import click

FORMATS = ("table", "csv", "json")


def format_option(default: str = "table"):
    """The shared ``--format`` option of every command that prints rows."""
    return click.option(
        "--format", "fmt", type=click.Choice(FORMATS), default=default, show_default=True,
        help="Output format: an aligned table, CSV, or a JSON array of objects.",
    )


def _non_finite(value: float) -> str:
    return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")


def _jsonable(value: Any) -> Any:
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, Decimal):
        return _non_finite(float(value)) if not value.is_finite() else float(value)
    if isinstance(value, float) and not math.isfinite(value):
        return _non_finite(value)
    if isinstance(value, (bytes, memoryview)):
        return bytes(value).hex()
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return value.item()
    return value


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}" if math.isfinite(value) else _non_finite(value)
    if isinstance(value, (dict, list)):
        return json.dumps(value, default=str)
    return str(value)


def unique_column_names(columns: Sequence[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """Distinct names for result columns (``nll``, ``nll_2``, ...) and the (old, new) renames made.

    A JSON object keeps one value per key and CSV readers key columns by name, so a join
    of two tables with an ``nll`` each would otherwise lose one of them.
    """
    taken = set(columns)
    seen: set[str] = set()
    names, renamed = [], []
    for name in columns:
        new = name
        if name in seen:
            n = 2
            while f"{name}_{n}" in taken:
                n += 1
            new = f"{name}_{n}"
            taken.add(new)
            renamed.append((name, new))
        seen.add(name)
        names.append(new)
    return names, renamed


def write_rows(columns: Sequence[str], rows: Iterable[Sequence[Any]], fmt: str, out: TextIO) -> int:
    """Write csv or json to ``out`` one row at a time (constant memory); returns the row count.

    The JSON is one array, byte for byte what :func:`render_rows` returns, plus a newline.
    """
    count = 0
    if fmt == "json":
        out.write("[")
        for row in rows:
            out.write((", " if count else "") + json.dumps({c: _jsonable(v) for c, v in zip(columns, row)},
                                                           default=str))
            count += 1
        out.write("]\n")
        return count
    if fmt == "csv":
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(columns)
        for row in rows:
            writer.writerow(["" if v is None else _jsonable(v) for v in row])
            count += 1
        return count
    raise click.BadParameter(f"format {fmt!r} cannot be streamed; choose csv or json")


def terminal_width() -> int | None:
    """The terminal's width when stdout is one, else None (a pipe or a file gets full-width lines)."""
    return shutil.get_terminal_size().columns if sys.stdout.isatty() else None


def render_rows(columns: Sequence[str], rows: Sequence[Sequence[Any]], fmt: str = "table",
                width: int | None | str = "terminal") -> str:
    """Render ``rows`` (sequences aligned with ``columns``) as text; no trailing newline.

    A table wider than ``width`` (default: the terminal's, when stdout is a terminal) is
    folded: long cells wrap inside their column, so every line fits and no value is cut.
    """
    if fmt in ("json", "csv"):
        buf = io.StringIO()
        write_rows(columns, rows, fmt, buf)
        return buf.getvalue().rstrip("\n")
    if fmt == "table":
        cells = [[_cell(v) for v in row] for row in rows]
        widths = [len(c) for c in columns]
        for row in cells:
            widths = [max(w, len(v)) for w, v in zip(widths, row)]
        numeric = [all(isinstance(r[i], (int, float)) or r[i] is None for r in rows) and rows for i in range(len(columns))]
        limit = terminal_width() if width == "terminal" else width
        if limit is not None and sum(widths) + 2 * (len(widths) - 1) > limit:
            return _folded_table(columns, cells, numeric, limit)

        def line(values: Sequence[str]) -> str:
            parts = [v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)]
            return "  ".join(parts).rstrip()

        out = [line(list(columns)), "  ".join("-" * w for w in widths)]
        out += [line(r) for r in cells]
        return "\n".join(out)
    raise click.BadParameter(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")


def _folded_table(columns: Sequence[str], cells: list[list[str]], numeric: list, width: int) -> str:
    """The table at most ``width`` characters wide, long cells folded over several lines (rich)."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, header_style="", padding=(0, 1))
    for name, num in zip(columns, numeric):
        table.add_column(name, justify="right" if num else "left", overflow="fold")
    for row in cells:
        table.add_row(*row)
    console = Console(width=width, file=io.StringIO(), color_system=None, highlight=False, emoji=False,
                      markup=False, soft_wrap=False)
    with console.capture() as capture:
        console.print(table)
    return "\n".join(line.rstrip() for line in capture.get().rstrip("\n").splitlines())


def render_records(records: Sequence[dict[str, Any]], fmt: str = "table", columns: Sequence[str] | None = None) -> str:
    """Render a list of dicts (all with the same keys, or the given ``columns``)."""
    if columns is None:
        columns = list(records[0].keys()) if records else []
    return render_rows(columns, [[r.get(c) for c in columns] for r in records], fmt)


def render_frame(frame, fmt: str = "table") -> str:
    """Render a pandas DataFrame with the same renderer."""
    cols = [str(c) for c in frame.columns]
    rows = [[None if (isinstance(v, float) and math.isnan(v)) else v for v in row] for row in frame.itertuples(index=False, name=None)]
    return render_rows(cols, rows, fmt)
