"""Tables fit the terminal: a table wider than the width folds its cells, losing nothing."""
from __future__ import annotations

import re

from tracker.render import render_rows

COLUMNS = ["name", "datasets", "title"]
ROWS = [["exp03", "ms_marco:400, squad_v2:400, trivia_qa:400, hotpot_qa:400",
         "Hard-example semantic isolation across datasets (decoder-only Exp 03)"],
        ["demo", "tinyqa:all", "The demo"]]


def test_a_wide_table_folds_to_the_width_and_keeps_every_character():
    text = render_rows(COLUMNS, ROWS, width=50)
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 50
    body = "".join(line for line in lines if set(line.strip()) != {"─"})  # the header rule aside
    cells = "".join(COLUMNS) + "".join(c for row in ROWS for c in row)
    assert sorted(re.sub(r"\s+", "", body)) == sorted(re.sub(r"\s+", "", cells))  # every character, once
    assert len(lines) > len(ROWS) + 2  # something was folded


def test_a_table_that_fits_is_the_plain_aligned_table():
    assert render_rows(COLUMNS, ROWS, width=None) == render_rows(COLUMNS, ROWS, width=400)
    assert render_rows(COLUMNS, ROWS, width=None).splitlines()[1].startswith("-----")
