"""The analysis plan: what an experiment's spec asks the report to compute.

One vocabulary, read here for both the spec loader (a bad plan is refused at enqueue,
before anything is written) and the analysis (which reads the typed plan).

A plan is a plain dict (from the spec's ``analysis`` section); :func:`normalize_plan`
checks it and fills defaults so the report code reads typed fields, not dict lookups.

Keys (all optional):

- ``reference`` ("bare"): the condition every other one is compared against.
- ``references``: further references; each condition is also compared against these.
- ``conditions``, ``datasets``: display order (default: as found, sorted).
- ``contrasts``: ``[[a, b], ...]`` paired comparisons, delta = NLL(b) - NLL(a) (positive =
  a beats b).
- ``gradient``: ordered condition names for the Spearman semantic gradient.
- ``structural``: ``{"random": "random_tokens", "oracle": "oracle"}``.
- ``hard_selection``: ``{"stage": 2, "fraction": 0.4, "by": "bare"}``.
- ``semantic_reference``: e.g. "random_tokens"; semantic delta = NLL(it) - NLL(C).
- ``factorial``: one design or a list; see :class:`Factorial`.
- ``group_by_answer_length``: true (seed bins 1-2, 3-5, 6-20, 21+) or a list of [lo, hi].
- ``hardness_independent``: "bare_nl", "odd_even", "auto" (default: bare_nl when scored,
  else odd/even answer tokens) or false.
- ``hardness_bins`` (5).

- ``mode_effects``: ``[{name: d_dec_q, with: encdec_q, without: encdec_nq, conditions: [bare]}]``:
  per model, each condition scored in mode ``with`` against itself in mode ``without``
  (delta = NLL(without) - NLL(with), positive = ``with`` helps); a table named ``name``.
- ``decompositions``: ``[{name: vocabulary, part: wrong_kw10, whole: kw10}]``: the share
  d(part)/d(whole) of a condition's benefit that a control reproduces (the structural
  fraction with other arms), with its bootstrap CI.
- ``attention``: true to summarise the probing modes' attention shares (table
  ``attention_shares``) per model, mode, condition, softmax, target and layer.
- ``pooled``: false to leave out the pooled rows (datasets that must not be pooled, e.g.
  ed02's doc-length levels).
- ``dataset_entries``: ``[{label, name, recipe}]`` (filled in from the spec): samples of one
  dataset prepared under different recipes are told apart by the entry whose recipe they
  match, and shown under its label.

Names may be ``condition@mode`` to pick a scoring mode when a model has several.

The spec files' vocabulary is accepted too: ``baseline`` (= reference), ``contrasts`` as a
list of names (the conditions compared with the baseline, in display order),
``selection: {stage, fraction, by}`` (= hard_selection), ``semantic_delta: {reference}``
(= semantic_reference), ``llm_vs_generic: {llm: [...], generic: name}`` (paired
comparisons of each llm condition with the generic one), ``hardness_quintiles: 5``
(= hardness_bins), ``ranking: false`` to skip the ranking, and ``cross_dataset_consistency``
(always on).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from tracker.errors import SpecError

# The seed's answer-length bins (words): 1-2, 3-5, 6-20, 21+.
DEFAULT_LENGTH_BINS: tuple[tuple[int, int | None], ...] = ((1, 2), (3, 5), (6, 20), (21, None))

HARDNESS_CHOICES = ("auto", "bare_nl", "odd_even", "none")
KNOWN_KEYS = frozenset({
    "reference", "baseline", "references", "conditions", "datasets", "contrasts", "comparisons", "gradient",
    "structural", "hard_selection", "selection", "semantic_reference", "semantic_delta", "factorial",
    "group_by_answer_length", "hardness_independent", "hardness_bins", "hardness_quintiles", "ranking",
    "llm_vs_generic", "pooled", "cross_dataset_consistency", "mode_effects", "decompositions", "attention",
    "dataset_entries",
})


@dataclass(frozen=True)
class Factorial:
    """A 2 x k design: two rows, k ordered columns, and the condition (arm) of each cell.

    Interaction contrasts are computed for each step between adjacent columns and, when
    k > 2, for the whole first-to-last step.
    """

    name: str
    rows: tuple[str, str]
    cols: tuple[str, ...]
    cells: tuple[tuple[str, ...], tuple[str, ...]]  # [row][col] -> arm name


@dataclass(frozen=True)
class ModeEffect:
    """Each condition in mode ``with_mode`` against itself in ``without_mode`` (e.g. d_dec_q)."""

    name: str
    with_mode: str
    without_mode: str
    conditions: tuple[str, ...]

    def pairs(self) -> list[tuple[str, str]]:
        """(condition arm, reference arm) per condition, as ``condition@mode`` names."""
        return [(f"{c}@{self.with_mode}", f"{c}@{self.without_mode}") for c in self.conditions]


@dataclass(frozen=True)
class Decomposition:
    """The share d(part)/d(whole) of ``whole``'s benefit that ``part`` reproduces."""

    name: str
    part: str
    whole: str


@dataclass(frozen=True)
class DatasetLabel:
    """A spec dataset entry: samples of ``name`` whose recipe contains ``recipe`` get ``label``."""

    label: str
    name: str
    recipe: tuple[tuple[str, object], ...] = ()


@dataclass(frozen=True)
class HardSelection:
    stage: int = 2
    fraction: float = 0.4
    by: str = "bare"


@dataclass(frozen=True)
class AnalysisPlan:
    reference: str = "bare"
    references: tuple[str, ...] = ()
    conditions: tuple[str, ...] = ()
    datasets: tuple[str, ...] = ()
    contrasts: tuple[tuple[str, str], ...] = ()
    gradient: tuple[str, ...] = ()
    structural: tuple[str, str] | None = None  # (random, oracle)
    hard_selection: HardSelection | None = None
    semantic_reference: str | None = None
    factorials: tuple[Factorial, ...] = ()
    length_bins: tuple[tuple[int, int | None], ...] | None = None
    hardness_independent: str = "auto"
    hardness_bins: int = 5
    ranking: bool = True
    mode_effects: tuple[ModeEffect, ...] = ()
    decompositions: tuple[Decomposition, ...] = ()
    attention: bool = False
    pooled: bool = True
    dataset_entries: tuple[DatasetLabel, ...] = ()
    unknown_keys: tuple[str, ...] = ()
    raw: dict = field(default_factory=dict, compare=False)


def _names(value, key: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise SpecError(f"analysis.{key} must be a list of names, got {value!r}.", hint=f"write {key}: [a, b, ...]")
    return tuple(str(v) for v in value)


def _pairs(value) -> tuple[tuple[str, str], ...]:
    out = []
    for item in value or ():
        if isinstance(item, Mapping):
            item = (item.get("condition") or item.get("a"), item.get("reference") or item.get("b"))
        if isinstance(item, str) or not isinstance(item, Sequence) or len(item) != 2 or None in item:
            raise SpecError(
                f"analysis.contrasts entries must be [condition, reference] pairs, got {item!r}.",
                hint="write contrasts: [[llm_extract, extractor_matched], ...]",
            )
        out.append((str(item[0]), str(item[1])))
    return tuple(out)


def _structural(value) -> tuple[str, str] | None:
    if value in (None, False):
        return None
    if value is True:
        return ("random_tokens", "oracle")
    if isinstance(value, Mapping):
        return (str(value.get("random", "random_tokens")), str(value.get("oracle", "oracle")))
    if isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 2:
        return (str(value[0]), str(value[1]))
    raise SpecError(f"analysis.structural must be {{random: ..., oracle: ...}}, got {value!r}.")


def _hard(value, reference: str) -> HardSelection | None:
    if value in (None, False):
        return None
    if value is True:
        return HardSelection(by=reference)
    if not isinstance(value, Mapping):
        raise SpecError(f"analysis.hard_selection must be a mapping, got {value!r}.")
    fraction = float(value.get("fraction", 0.4))
    if not 0 < fraction <= 1:
        raise SpecError(f"analysis.hard_selection.fraction must be in (0, 1], got {fraction}.")
    return HardSelection(stage=int(value.get("stage", 2)), fraction=fraction, by=str(value.get("by", reference)))


def _bins(value) -> tuple[tuple[int, int | None], ...] | None:
    if value in (None, False):
        return None
    if value is True:
        return DEFAULT_LENGTH_BINS
    try:
        bins = tuple((int(lo), None if hi is None else int(hi)) for lo, hi in value)
    except (TypeError, ValueError) as err:
        raise SpecError(
            f"analysis.group_by_answer_length must be true or a list of [lo, hi] bins, got {value!r}.",
            hint="e.g. [[1, 2], [3, 5], [6, 20], [21, null]]",
        ) from err
    return bins


def _factorial(value, index: int) -> Factorial:
    if not isinstance(value, Mapping):
        raise SpecError(f"analysis.factorial[{index}] must be a mapping, got {value!r}.")
    name = str(value.get("name", f"factorial{index + 1}"))
    rows, cols, cells = value.get("rows"), value.get("cols"), value.get("cells")
    if cells is not None:
        row_names = list(rows) if rows is not None else ["row1", "row2"]
        if isinstance(cells, Mapping):
            row_names = list(rows) if rows is not None else list(cells)
            col_names = list(cols) if cols is not None else list(next(iter(cells.values())))
            grid = [[cells[r][c] for c in col_names] for r in row_names]
        else:
            grid = [list(r) for r in cells]
            col_names = list(cols) if cols is not None else [f"col{j + 1}" for j in range(len(grid[0]))]
    elif isinstance(rows, Mapping) and isinstance(cols, Mapping):
        # rows name conditions, columns name scoring modes: cell = condition@mode
        row_names, col_names = list(rows), list(cols)
        grid = [[f"{rows[r]}@{cols[c]}" for c in col_names] for r in row_names]
    else:
        raise SpecError(
            f"analysis.factorial {name!r} needs cells, or rows {{label: condition}} and cols {{label: mode}}.",
            hint="e.g. {rows: {bare: bare, oracle: oracle}, cols: {nq: encdec_nq, q: encdec_q}}",
        )
    if len(grid) != 2 or len(row_names) != 2 or any(len(r) != len(col_names) for r in grid) or len(col_names) < 2:
        raise SpecError(f"analysis.factorial {name!r} must be 2 x k with k >= 2, got {len(grid)} rows.")
    return Factorial(
        name=name,
        rows=(str(row_names[0]), str(row_names[1])),
        cols=tuple(str(c) for c in col_names),
        cells=(tuple(str(x) for x in grid[0]), tuple(str(x) for x in grid[1])),
    )


def _mode_effects(value) -> tuple[ModeEffect, ...]:
    out = []
    for i, item in enumerate(value or ()):
        if not isinstance(item, Mapping) or not item.get("with") or not item.get("without"):
            raise SpecError(f"analysis.mode_effects[{i}] must be {{name, with: mode, without: mode, conditions}}, "
                            f"got {item!r}.", hint="e.g. {name: d_dec_q, with: encdec_q, without: encdec_nq, conditions: [bare]}")
        conditions = _names(item.get("conditions") or ["bare"], f"mode_effects[{i}].conditions")
        name = str(item.get("name") or f"{item['with']}_vs_{item['without']}")
        out.append(ModeEffect(name, str(item["with"]), str(item["without"]), conditions))
    return tuple(out)


def _decompositions(value) -> tuple[Decomposition, ...]:
    out = []
    for i, item in enumerate(value or ()):
        if not isinstance(item, Mapping) or not item.get("part") or not item.get("whole"):
            raise SpecError(f"analysis.decompositions[{i}] must be {{name, part, whole}}, got {item!r}.",
                            hint="e.g. {name: vocabulary, part: wrong_kw10, whole: kw10}")
        out.append(Decomposition(str(item.get("name") or f"{item['part']}/{item['whole']}"), str(item["part"]),
                                 str(item["whole"])))
    return tuple(out)


def _dataset_entries(value) -> tuple[DatasetLabel, ...]:
    out = []
    for item in value or ():
        recipe = tuple(sorted((str(k), v) for k, v in dict(item.get("recipe") or {}).items()))
        out.append(DatasetLabel(str(item.get("label") or item["name"]), str(item["name"]), recipe))
    return tuple(out)


def _contrasts(plan: dict) -> tuple[tuple[tuple[str, str], ...], tuple[str, ...]]:
    """(paired comparisons, conditions named for the baseline table) from contrasts and friends."""
    raw = plan.get("contrasts") or []
    if isinstance(raw, str) or not isinstance(raw, Sequence):
        raise SpecError(f"analysis.contrasts must be a list, got {raw!r}.", hint="write contrasts: [a, b, ...] or [[a, b], ...]")
    names = tuple(str(c) for c in raw if isinstance(c, str))
    pairs = list(_pairs([c for c in raw if not isinstance(c, str)]))
    pairs += _pairs(plan.get("comparisons"))
    lvg = plan.get("llm_vs_generic")
    if lvg:
        if not isinstance(lvg, Mapping) or "generic" not in lvg:
            raise SpecError(f"analysis.llm_vs_generic must be {{llm: [...], generic: name}}, got {lvg!r}.")
        pairs += [(str(c), str(lvg["generic"])) for c in _names(lvg.get("llm"), "llm_vs_generic.llm")]
    return tuple(dict.fromkeys(pairs)), names


def normalize_plan(plan: Mapping | AnalysisPlan | None) -> AnalysisPlan:
    """Check a plan dict and fill defaults; malformed fields raise :class:`SpecError`."""
    if isinstance(plan, AnalysisPlan):
        return plan
    plan = dict(plan or {})
    reference = str(plan.get("reference") or plan.get("baseline") or "bare")
    factorial = plan.get("factorial")
    factorials = [] if factorial in (None, False) else [factorial] if isinstance(factorial, Mapping) else list(factorial)
    hardness = plan.get("hardness_independent", "auto")
    hardness = "none" if hardness in (False, None) else str(hardness)
    if hardness not in HARDNESS_CHOICES:
        raise SpecError(
            f"analysis.hardness_independent must be one of {', '.join(HARDNESS_CHOICES)}, got {hardness!r}."
        )
    semantic = plan.get("semantic_reference")
    if not semantic and isinstance(plan.get("semantic_delta"), Mapping):
        semantic = plan["semantic_delta"].get("reference")
    pairs, contrast_names = _contrasts(plan)
    conditions = _names(plan.get("conditions"), "conditions") or contrast_names
    hard = plan.get("hard_selection", plan.get("selection"))
    bins = plan.get("hardness_bins", plan.get("hardness_quintiles", 5))
    return AnalysisPlan(
        reference=reference,
        references=tuple(r for r in _names(plan.get("references"), "references") if r != reference),
        conditions=conditions,
        datasets=_names(plan.get("datasets"), "datasets"),
        contrasts=pairs,
        gradient=_names(plan.get("gradient"), "gradient"),
        structural=_structural(plan.get("structural")),
        hard_selection=_hard(hard, reference),
        semantic_reference=str(semantic) if semantic else None,
        factorials=tuple(_factorial(f, i) for i, f in enumerate(factorials)),
        length_bins=_bins(plan.get("group_by_answer_length")),
        hardness_independent=hardness,
        hardness_bins=int(bins) if bins not in (None, False, True) else 5,
        ranking=plan.get("ranking", True) is not False,
        mode_effects=_mode_effects(plan.get("mode_effects")),
        decompositions=_decompositions(plan.get("decompositions")),
        attention=bool(plan.get("attention", False)),
        pooled=plan.get("pooled", True) is not False,
        dataset_entries=_dataset_entries(plan.get("dataset_entries")),
        unknown_keys=tuple(sorted(k for k in plan if k not in KNOWN_KEYS)),
        raw=plan,
    )
