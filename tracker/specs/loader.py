"""Load and validate experiment specs (YAML): every error names the field to fix.

Format (see the shipped ``exp*.yaml`` and ``demo.yaml``)::

    name: exp02                       # required, [a-z0-9_-]
    title: one line                   # optional
    description: |                    # optional prose (not part of the spec hash)
    seed: 42                          # default seed of every dataset
    device: cuda                      # where the models will run (picks the default dtype)
    models: [gemma-3-12b-it]          # registry names, or {name, dtype, revision}
    mode: two_phase                   # or modes: [...]; crossed with every condition
    generator: scoring                # default generator of llm conditions ("scoring" = the scored model)
    max_new_tokens: 64                # default generation budget of llm conditions
    datasets:
      - {name: ms_marco, n: 400}      # + seed, split, recipe: {...}, label
      - {name: ms_marco, n: 400, label: len512,           # token-length recipe (MS MARCO, ed02):
         recipe: {pad_to_tokens: 512, max_doc_tokens: 98, tokenizer: scoring}}
    conditions:                       # catalogue names, or {name, kind, params, mode}
      - bare
      - {name: llm_extract, params: {max_new_tokens: 24}}
      - {name: kw5, kind: doc_keywords, params: {k: 5}}
    stages:                           # optional; default: one stage with every condition
      - {name: bare, conditions: [bare]}
      - {name: hard, conditions: [...], select: {by: bare, fraction: 0.4}}
    analysis: {baseline: bare, ...}   # the analysis plan (one vocabulary: tracker/specs/plan.py)

Recipe options are per dataset (its loader's ``recipe_keys``). ``pad_to_tokens`` pads each
doc with unrelated passages to exactly that many tokens and ``max_doc_tokens`` keeps only
rows whose own doc is at most that long, both under ``tokenizer`` (a model name; default
``scoring`` = the scored model, resolved by enqueue); see :mod:`tracker.datasets`.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from tracker.catalogue.dtypes import DTYPE_ALIASES
from tracker.catalogue.modes import ALL_MODES
from tracker.conditions import (
    CATALOGUE,
    CONDITION_KINDS,
    DEFAULT_MAX_NEW_TOKENS,
    GENERATOR_IS_SCORING_MODEL,
    SURROGATE_KINDS,
    ConditionDefinition,
    check_prompt_template,
)
from tracker.datasets import DATASETS, TOKENIZER_IS_SCORING_MODEL
from tracker.errors import SpecError, UnknownExperimentError
from tracker.specs.plan import normalize_plan
from tracker.specs.schema import (
    DatasetEntry,
    ExperimentSpec,
    ModelEntry,
    SelectRule,
    StageSpec,
)

TOP_LEVEL_FIELDS = frozenset({
    "name", "title", "description", "seed", "device", "models", "mode", "modes", "generator",
    "max_new_tokens", "datasets", "conditions", "stages", "analysis",
})
REQUIRED_FIELDS = ("name", "datasets", "conditions", "models")
DATASET_FIELDS = frozenset({"name", "n", "seed", "split", "recipe", "label"})
CONDITION_FIELDS = frozenset({"name", "kind", "params", "mode"})
MODEL_FIELDS = frozenset({"name", "dtype", "revision"})
STAGE_FIELDS = frozenset({"name", "conditions", "select"})
SELECT_FIELDS = frozenset({"by", "fraction", "order", "per"})
DEVICES = ("cpu", "cuda", "mps")
DTYPES = tuple(sorted(set(DTYPE_ALIASES.values())))
DOC_SOURCES = ("own", "partner")  # doc_sentence: the sample's own doc or its partner's
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


def known_modes() -> tuple[str, ...]:
    return tuple(ALL_MODES)


# --- small validators ------------------------------------------------------------------------

def _fail(where: str, message: str, hint: str | None = None) -> SpecError:
    return SpecError(f"spec field `{where}`: {message}", hint=hint)


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise _fail(where, f"expected a mapping, got {type(value).__name__}")
    return value


def _list(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list) or not value:
        raise _fail(where, "expected a non-empty list")
    return value


def _int(value: Any, where: str, *, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(where, f"expected an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise _fail(where, f"must be at least {minimum}, got {value}")
    return value


def _str(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _fail(where, f"expected a non-empty string, got {value!r}")
    return value


def _no_unknown(entry: Mapping[str, Any], allowed: frozenset[str], where: str) -> None:
    unknown = sorted(set(entry) - allowed)
    if unknown:
        raise _fail(f"{where}.{unknown[0]}" if where else unknown[0], "unknown field", hint=f"allowed fields: {', '.join(sorted(allowed))}")


# --- sections ---------------------------------------------------------------------------------

def _datasets(raw: Any, default_seed: int) -> tuple[DatasetEntry, ...]:
    entries = []
    for i, item in enumerate(_list(raw, "datasets")):
        where = f"datasets[{i}]"
        item = {"name": item} if isinstance(item, str) else _mapping(item, where)
        _no_unknown(item, DATASET_FIELDS, where)
        if "name" not in item:
            raise _fail(f"{where}.name", "missing")
        name = _str(item["name"], f"{where}.name")
        if name not in DATASETS:
            raise _fail(f"{where}.name", f"unknown dataset {name!r}", hint=f"known datasets: {', '.join(DATASETS)}")
        recipe = dict(_mapping(item.get("recipe", {}), f"{where}.recipe"))
        unknown = sorted(set(recipe) - DATASETS[name].recipe_keys)
        if unknown:
            raise _fail(f"{where}.recipe.{unknown[0]}", f"dataset {name} has no recipe option {unknown[0]!r}",
                        hint=f"its options: {', '.join(sorted(DATASETS[name].recipe_keys))}")
        for key in ("doc_max_words", "pad_to_tokens", "max_doc_tokens"):
            if key in recipe:
                _int(recipe[key], f"{where}.recipe.{key}", minimum=1)
        if "pad_to_tokens" in recipe or "max_doc_tokens" in recipe:
            recipe["tokenizer"] = _str(recipe.get("tokenizer", TOKENIZER_IS_SCORING_MODEL), f"{where}.recipe.tokenizer")
            if recipe.get("max_doc_tokens", 0) > recipe.get("pad_to_tokens", recipe.get("max_doc_tokens", 0)):
                raise _fail(f"{where}.recipe.max_doc_tokens", "exceeds pad_to_tokens (such docs cannot be padded)")
        elif "tokenizer" in recipe:
            raise _fail(f"{where}.recipe.tokenizer", "only token-length recipes (pad_to_tokens, max_doc_tokens) "
                        "use a tokenizer")
        n = item.get("n")
        if n is not None and n != "all":
            n = _int(n, f"{where}.n", minimum=1)
        entries.append(DatasetEntry(
            name=name, n=None if n in (None, "all") else n,
            seed=_int(item.get("seed", default_seed), f"{where}.seed"),
            split=_str(item["split"], f"{where}.split") if item.get("split") is not None else None,
            recipe=recipe,
            label=_str(item["label"], f"{where}.label") if item.get("label") is not None else "",
        ))
    keys = [d.key for d in entries]
    dupes = sorted({k for k in keys if keys.count(k) > 1})
    if dupes:
        raise _fail("datasets", f"dataset {dupes[0]!r} appears twice", hint="give each entry its own `label`")
    return tuple(entries)


def _models(raw: Any) -> tuple[ModelEntry, ...]:
    entries = []
    for i, item in enumerate(_list(raw, "models")):
        where = f"models[{i}]"
        item = {"name": item} if isinstance(item, str) else _mapping(item, where)
        _no_unknown(item, MODEL_FIELDS, where)
        if "name" not in item:
            raise _fail(f"{where}.name", "missing")
        dtype = item.get("dtype")
        if dtype is not None and dtype not in DTYPES:
            raise _fail(f"{where}.dtype", f"unknown dtype {dtype!r}", hint=f"one of {', '.join(DTYPES)}")
        entries.append(ModelEntry(_str(item["name"], f"{where}.name"), dtype,
                                  str(item["revision"]) if item.get("revision") is not None else None))
    names = [m.name for m in entries]
    if len(set(names)) != len(names):
        raise _fail("models", "a model appears twice")
    return tuple(entries)


def _modes(spec: Mapping[str, Any]) -> tuple[str, ...]:
    if "mode" in spec and "modes" in spec:
        raise _fail("mode", "give either `mode` or `modes`, not both")
    if "modes" in spec:
        modes = [_str(m, f"modes[{i}]") for i, m in enumerate(_list(spec["modes"], "modes"))]
        where = "modes"
    else:
        modes = [_str(spec.get("mode", "two_phase"), "mode")]
        where = "mode"
    known = known_modes()
    for i, m in enumerate(modes):
        if m not in known:
            raise _fail(f"{where}[{i}]" if where == "modes" else where, f"unknown scoring mode {m!r}",
                        hint=f"known modes: {', '.join(known)}")
    return tuple(modes)


def _check_params(kind: str, params: Mapping[str, Any], where: str) -> None:
    spec_kind = CONDITION_KINDS[kind]
    allowed = set(spec_kind.defaults) | set(spec_kind.required)
    for key in params:
        if key not in allowed:
            raise _fail(f"{where}.params.{key}", f"kind {kind!r} takes no parameter {key!r}",
                        hint=f"its parameters: {', '.join(sorted(allowed)) or '(none)'}")
    for key in spec_kind.required:
        if key not in params:
            raise _fail(f"{where}.params.{key}", f"kind {kind!r} needs parameter {key!r}")
    for key in ("seed", "k", "max_new_tokens"):
        if key in params:
            _int(params[key], f"{where}.params.{key}", minimum=0 if key == "seed" else 1)
    for key in ("matched", "shuffle"):
        if key in params and not isinstance(params[key], bool):
            raise _fail(f"{where}.params.{key}", "expected true or false")
    if "doc" in params and params["doc"] not in DOC_SOURCES:
        raise _fail(f"{where}.params.doc", f"unknown doc {params['doc']!r}", hint=f"one of {', '.join(DOC_SOURCES)}")
    for key in ("text", "token_text", "template", "prompt"):
        if key in params:
            _str(params[key], f"{where}.params.{key}")
    if kind == "llm":
        if params["surrogate"] not in SURROGATE_KINDS:
            raise _fail(f"{where}.params.surrogate", f"unknown surrogate kind {params['surrogate']!r}",
                        hint=f"one of {', '.join(SURROGATE_KINDS)}")
        check_prompt_template(params["prompt"], f"{where}.params.prompt")
        _str(params["generator"], f"{where}.params.generator")
    if kind == "keyword_template" and "{keywords}" not in params["template"]:
        raise _fail(f"{where}.params.template", "must contain {keywords}")


def _condition(item: Any, i: int, spec: Mapping[str, Any], modes: tuple[str, ...]) -> ConditionDefinition:
    where = f"conditions[{i}]"
    item = {"name": item} if isinstance(item, str) else _mapping(item, where)
    _no_unknown(item, CONDITION_FIELDS, where)
    if "name" not in item:
        raise _fail(f"{where}.name", "missing")
    name = _str(item["name"], f"{where}.name")
    if not NAME_RE.match(name):
        raise _fail(f"{where}.name", f"{name!r} is not a plain name (letters, digits, _ . -)")
    base = CATALOGUE.get(name)
    kind = item.get("kind") or (base.kind if base else None)
    if kind is None:
        raise _fail(f"{where}.name", f"unknown condition {name!r} (and no `kind` given)",
                    hint=f"catalogue: {', '.join(CATALOGUE)}; or give kind + params")
    if kind not in CONDITION_KINDS:
        raise _fail(f"{where}.kind", f"unknown condition kind {kind!r}",
                    hint=f"known kinds: {', '.join(CONDITION_KINDS)}")
    overrides = dict(_mapping(item.get("params", {}), f"{where}.params"))
    inherited = dict(base.params) if base and base.kind == kind else {}
    params = {**CONDITION_KINDS[kind].defaults, **inherited, **overrides}
    if kind == "llm":
        if "generator" not in overrides and "generator" in spec:
            params["generator"] = spec["generator"]
        if "max_new_tokens" not in overrides and "max_new_tokens" in spec:
            params["max_new_tokens"] = spec["max_new_tokens"]
        params.setdefault("max_new_tokens", DEFAULT_MAX_NEW_TOKENS)
        params.setdefault("generator", GENERATOR_IS_SCORING_MODEL)
    _check_params(kind, params, where)
    mode = item.get("mode", base.mode if base and base.kind == kind else None)
    if mode is not None:
        known = known_modes()
        if mode not in known:
            raise _fail(f"{where}.mode", f"unknown scoring mode {mode!r}", hint=f"known modes: {', '.join(known)}")
    return ConditionDefinition(name=name, kind=kind, params=params, mode=mode)


def _conditions(spec: Mapping[str, Any], modes: tuple[str, ...]) -> tuple[ConditionDefinition, ...]:
    defs = tuple(_condition(item, i, spec, modes) for i, item in enumerate(_list(spec["conditions"], "conditions")))
    names = [d.name for d in defs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise _fail("conditions", f"condition {dupes[0]!r} appears twice")
    return defs


def _stages(raw: Any, conditions: tuple[ConditionDefinition, ...]) -> tuple[StageSpec, ...]:
    names = [c.name for c in conditions]
    if raw is None:
        return (StageSpec(1, "all", tuple(names)),)
    stages: list[StageSpec] = []
    seen: dict[str, int] = {}
    for i, item in enumerate(_list(raw, "stages")):
        where = f"stages[{i}]"
        item = _mapping(item, where)
        _no_unknown(item, STAGE_FIELDS, where)
        conds = _list(item.get("conditions"), f"{where}.conditions")
        for j, c in enumerate(conds):
            if c not in names:
                raise _fail(f"{where}.conditions[{j}]", f"{c!r} is not one of the spec's conditions")
            if c in seen:
                raise _fail(f"{where}.conditions[{j}]", f"{c!r} is already in stage {seen[c]}")
            seen[c] = i + 1
        select = None
        if i == 0 and item.get("select") is not None:
            raise _fail(f"{where}.select", "the first stage runs on every sample; only later stages select")
        if i > 0:
            if item.get("select") is None:
                raise _fail(f"{where}.select", "missing: a later stage must say which samples it runs on")
            select = _select(item["select"], f"{where}.select", stages[0])
        stages.append(StageSpec(i + 1, str(item.get("name") or f"stage{i + 1}"), tuple(conds), select))
    missing = [n for n in names if n not in seen]
    if missing:
        raise _fail("stages", f"condition {missing[0]!r} is in no stage")
    return tuple(stages)


def _select(raw: Any, where: str, first: StageSpec) -> SelectRule:
    item = _mapping(raw, where)
    _no_unknown(item, SELECT_FIELDS, where)
    by = item.get("by", "bare")
    if by not in first.conditions:
        raise _fail(f"{where}.by", f"{by!r} is not a condition of the first stage")
    fraction = item.get("fraction")
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
        raise _fail(f"{where}.fraction", f"expected a number in (0, 1], got {fraction!r}")
    order = item.get("order", "highest_nll")
    if order != "highest_nll":
        raise _fail(f"{where}.order", f"unknown order {order!r}", hint="supported: highest_nll")
    per = item.get("per", "dataset")
    if per != "dataset":
        raise _fail(f"{where}.per", f"unknown grouping {per!r}", hint="supported: dataset")
    return SelectRule(by=by, fraction=float(fraction), order=order, per=per)


def _analysis(raw: Any, conditions: tuple[ConditionDefinition, ...]) -> dict[str, Any]:
    if raw is None:
        return {"baseline": "bare"} if any(c.name == "bare" for c in conditions) else {}
    plan = dict(_mapping(raw, "analysis"))
    names = {c.name for c in conditions}

    def check(value: Any, where: str) -> None:
        if isinstance(value, str) and value not in names:
            raise _fail(where, f"{value!r} is not one of the spec's conditions")

    if "baseline" in plan:
        check(plan["baseline"], "analysis.baseline")
    for key in ("contrasts", "gradient", "conditions"):
        for j, c in enumerate(plan.get(key) or []):
            check(c, f"analysis.{key}[{j}]")
    for key, value in (plan.get("structural") or {}).items():
        check(value, f"analysis.structural.{key}")
    if "semantic_delta" in plan:
        check((plan["semantic_delta"] or {}).get("reference"), "analysis.semantic_delta.reference")
    normalize_plan(plan)  # the analysis's own reading of the plan: a malformed one is refused now
    return plan


# --- entry points -------------------------------------------------------------------------------

def parse_spec(data: Any, source: str | None = None) -> ExperimentSpec:
    """Validate a spec given as a mapping (parsed YAML) and return it typed."""
    spec = _mapping(data, "(spec)")
    _no_unknown(spec, TOP_LEVEL_FIELDS, "")
    for key in REQUIRED_FIELDS:
        if key not in spec or spec[key] in (None, "", []):
            raise _fail(key, "missing (required)")
    name = _str(spec["name"], "name")
    if not NAME_RE.match(name):
        raise _fail("name", f"{name!r} is not a plain name (letters, digits, _ . -)")
    device = spec.get("device", "cuda")
    if device not in DEVICES:
        raise _fail("device", f"unknown device {device!r}", hint=f"one of {', '.join(DEVICES)}")
    if "max_new_tokens" in spec:
        _int(spec["max_new_tokens"], "max_new_tokens", minimum=1)
    if "generator" in spec:
        _str(spec["generator"], "generator")
    modes = _modes(spec)
    conditions = _conditions(spec, modes)
    return ExperimentSpec(
        name=name,
        title=str(spec.get("title") or ""),
        description=str(spec.get("description") or "").strip(),
        datasets=_datasets(spec["datasets"], _int(spec.get("seed", 42), "seed")),
        conditions=conditions,
        models=_models(spec["models"]),
        modes=modes,
        device=device,
        stages=_stages(spec.get("stages"), conditions),
        analysis=_analysis(spec.get("analysis"), conditions),
        source=source,
    )


MAX_EXPANDED_NODES = 100_000  # a spec is a few hundred nodes; aliases may not multiply it past this


def _expanded_size(node: yaml.Node, memo: dict[int, int]) -> int:
    """How many nodes ``node`` stands for once every alias is expanded (linear time: aliases
    are shared nodes, so each is counted once per distinct node and multiplied, not walked)."""
    key = id(node)
    if key not in memo:
        memo[key] = 1  # a recursive alias counts once instead of looping
        if isinstance(node, yaml.SequenceNode):
            memo[key] = 1 + sum(_expanded_size(child, memo) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            memo[key] = 1 + sum(_expanded_size(k, memo) + _expanded_size(v, memo) for k, v in node.value)
    return memo[key]


def parse_yaml(text: str, where: str) -> Any:
    """YAML text to data, refusing alias bombs ("billion laughs") before anything is built."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        if root is None:
            return None
        size = _expanded_size(root, {})
        if size > MAX_EXPANDED_NODES:
            raise SpecError(f"{where}: its YAML aliases expand to {size:,} nodes (at most {MAX_EXPANDED_NODES:,})",
                            hint="write the values out instead of nesting aliases (&name / *name)")
        return yaml.SafeLoader(text).get_single_data()
    except yaml.YAMLError as err:
        raise SpecError(f"{where} is not valid YAML: {err}", hint="check the line and column named above") from err


def load_spec_file(path: str | Path) -> ExperimentSpec:
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as err:
        raise UnknownExperimentError(f"Cannot read spec file {path}: {err}") from err
    except UnicodeDecodeError as err:
        line = path.read_bytes()[: err.start].count(b"\n") + 1
        raise SpecError(f"{path} is not UTF-8 text: byte 0x{err.object[err.start]:02x} on line {line}",
                        hint="save the spec as UTF-8 (e.g. `iconv -f latin1 -t utf-8 FILE`)") from err
    return parse_spec(parse_yaml(text, str(path)), source=str(path))


def spec_names() -> list[str]:
    """Names of the specs shipped in the package."""
    folder = resources.files("tracker.specs")
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_spec(name_or_path: str | Path) -> ExperimentSpec:
    """A shipped spec by name (``exp03``) or a spec file by path (``my/spec.yaml``)."""
    text = str(name_or_path)
    if text.endswith((".yaml", ".yml")) or "/" in text or Path(text).is_file():
        if not Path(text).is_file():
            raise UnknownExperimentError(f"No spec file {text}.",
                                         hint=f"shipped specs: {', '.join(spec_names())}; or give a path to a .yaml file")
        return load_spec_file(text)
    if text not in spec_names():
        raise UnknownExperimentError(
            f"Unknown experiment {text!r}.",
            hint=f"shipped specs: {', '.join(spec_names())} (see `tracker experiments`), or a path to a .yaml file",
        )
    resource = resources.files("tracker.specs").joinpath(f"{text}.yaml")
    data = parse_yaml(resource.read_text(encoding="utf-8"), f"tracker/specs/{text}.yaml")
    return parse_spec(data, source=f"tracker/specs/{text}.yaml")


def list_specs() -> list[ExperimentSpec]:
    return [load_spec(name) for name in spec_names()]
