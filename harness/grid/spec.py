"""Grid specs: a YAML file of a base run config and labelled axes, expanded into cells.

A spec has a ``base`` run config, named ``axes`` whose values are labelled override sets, an
optional ``exclude`` list of label combinations, an optional ``include`` list of extra cells and
a ``compare`` section naming the win-rate baseline. Expansion is deterministic (axes and labels
in the order written, the product in row-major order, then the included cells), and a cell's id
is a hash of its fully resolved run config: a changed hyper-parameter is a new cell, an unchanged
one is found again.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from harness.errors import ConfigError
from harness.grid.yaml_strict import load_yaml

ASSETS_DIR = Path(__file__).resolve().parents[1] / "assets"

Resolver = Callable[[dict[str, Any]], dict[str, Any]]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EvalSpec(_Strict):
    """Evaluations run on every cell after training (``harness eval RUN_DIR --tasks ...``)."""

    tasks: list[str] = Field(default_factory=list)
    protocol: str | None = None
    limit: int | None = None
    args: list[str] = Field(default_factory=list, description="extra arguments for harness eval")


class CompareSpec(_Strict):
    """Which cell is the win-rate baseline of which.

    ``baseline`` gives labels; a cell's baseline is the cell with the same labels except these
    (the survey: ``{data: self_instruct}``, the Self-Instruct cell of the same model size).
    """

    baseline: dict[str, str]
    judge: str = "local"
    args: list[str] = Field(default_factory=list, description="extra arguments for harness eval winrate")


class SlurmSpec(_Strict):
    """SLURM resources of one cell's job (flags on ``harness grid`` override these)."""

    partition: str | None = None
    time_min: int = 240
    nodes: int = 1
    gpus_per_node: int = 0
    cpus_per_task: int | None = None
    mem_gb: float | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    additional: dict[str, Any] = Field(default_factory=dict, description="extra submitit slurm_* parameters")


class TableSpec(_Strict):
    """How ``harness table`` lays out this grid."""

    layout: Literal["survey", "pivot"] = "survey"
    mixture_axis: str = "data"
    model_axis: str | None = None
    model: str | None = Field(None, description="published model rows to set beside (no model axis)")
    rows: list[str] = Field(default_factory=list)
    cols: list[str] = Field(default_factory=list)
    metric: str | None = None


class IncludeSpec(_Strict):
    """An extra cell: a label for every axis plus overrides for labels no axis defines."""

    labels: dict[str, str]
    overrides: dict[str, Any] = Field(default_factory=dict)


class ParamSpec(_Strict):
    """A value the user supplies (``--param NAME=VALUE``), substituted for ``${NAME}`` in the spec."""

    help: str = ""
    default: str | None = None


class GridSpec(_Strict):
    """The parsed grid file (see the module docstring)."""

    name: str | None = None
    description: str = ""
    base: dict[str, Any] | str
    axes: dict[str, dict[str, dict[str, Any] | None]] = Field(default_factory=dict)
    exclude: list[dict[str, str]] = Field(default_factory=list)
    include: list[IncludeSpec] = Field(default_factory=list)
    compare: CompareSpec | None = None
    eval: EvalSpec = Field(default_factory=EvalSpec)
    slurm: SlurmSpec = Field(default_factory=SlurmSpec)
    table: TableSpec = Field(default_factory=TableSpec)
    notes: dict[str, dict[str, str]] = Field(default_factory=dict, description="axis -> label -> note")
    params: dict[str, ParamSpec] = Field(default_factory=dict, description="user-supplied ${NAME} values")
    plan_model: str | None = Field(None, description="preset of the init's architecture for --dry-run's memory plan")
    runs_dir: str = "runs"
    out: str | None = None


@dataclass(frozen=True)
class LoadedSpec:
    """A validated spec with the file it came from."""

    spec: GridSpec
    path: Path
    name: str

    @property
    def spec_dir(self) -> Path:
        return self.path.parent

    def runs_dir(self, override: str | Path | None = None) -> Path:
        """Where the cells' run directories live (relative paths are relative to the cwd)."""
        return Path(override) if override is not None else Path(self.spec.runs_dir)

    def out_dir(self, override: str | Path | None = None) -> Path:
        """Where tables and plots are written (default ``results/<name>``)."""
        if override is not None:
            return Path(override)
        return Path(self.spec.out) if self.spec.out else Path("results") / self.name


@dataclass
class Cell:
    """One resolved grid cell."""

    id: str
    labels: dict[str, str]
    config: dict[str, Any]
    overrides: dict[str, Any] = field(default_factory=dict)
    baseline: str | None = None  # id of the win-rate baseline cell (None: none or itself)
    is_baseline: bool = False
    notes: list[str] = field(default_factory=list)

    def label_text(self) -> str:
        return ",".join(f"{k}={v}" for k, v in self.labels.items())


def load_grid_spec(path: str | Path, params: dict[str, str] | None = None) -> LoadedSpec:
    """Read and validate a grid YAML file; every error names the file and the key.

    ``${assets}`` (the package's assets folder), ``${spec_dir}`` and the spec's declared
    ``params`` (values from ``params``, else their default) are substituted in every string.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"grid spec not found: {path}")
    raw = load_yaml(path)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a grid spec is a mapping with base, axes, compare ...")
    try:
        declared = GridSpec.model_validate(raw).params
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"{path}: {problems}") from None
    given = dict(params or {})
    unknown = sorted(set(given) - set(declared))
    if unknown:
        raise ConfigError(f"{path}: unknown parameter {unknown[0]!r} (declared: {', '.join(declared) or 'none'})")
    variables = {"assets": str(ASSETS_DIR), "spec_dir": str(path.parent.resolve())}
    for name, param in declared.items():
        value = given.get(name, param.default)
        if value is None:
            raise ConfigError(f"{path}: parameter {name!r} is required: pass --param {name}=VALUE ({param.help})")
        variables[name] = _substitute(value, {"assets": variables["assets"], "spec_dir": variables["spec_dir"]})
    substituted = _substitute(raw, variables)
    leftover = sorted(set(re.findall(r"\$\{([^}]*)\}", json.dumps(substituted))))
    if leftover:
        raise ConfigError(f"{path}: unknown variable ${{{leftover[0]}}} (known: {', '.join(variables)})")
    spec = GridSpec.model_validate(substituted)
    return LoadedSpec(spec=spec, path=path, name=spec.name or path.stem)


def parse_params(items: Iterable[str]) -> dict[str, str]:
    """``--param NAME=VALUE`` flags into a dict (a name given twice is an error)."""
    params: dict[str, str] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--param {item!r}: expected NAME=VALUE")
        name, value = item.split("=", 1)
        if name in params:
            raise ConfigError(f"--param {name!r} is given twice")
        params[name.strip()] = value
    return params


def _substitute(value: Any, variables: dict[str, str]) -> Any:
    """Replace ``${assets}`` / ``${spec_dir}`` in every string of a nested value."""
    if isinstance(value, str):
        for key, replacement in variables.items():
            value = value.replace("${" + key + "}", replacement)
        return value
    if isinstance(value, dict):
        return {k: _substitute(v, variables) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, variables) for v in value]
    return value


def nest_overrides(overrides: dict[str, Any], where: str) -> dict[str, Any]:
    """Turn ``{"train.lr": 1e-4, "data": {...}}`` into a nested dict; a key set twice is an error."""
    nested: dict[str, Any] = {}
    for key, value in overrides.items():
        parts = str(key).split(".")
        node = nested
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"{where}: key {key!r} conflicts with {part!r} set to a value")
            node = child
        leaf = parts[-1]
        if isinstance(value, dict):
            value = nest_overrides(value, f"{where}.{key}")
            existing = node.get(leaf)
            if isinstance(existing, dict):
                _merge_disjoint(existing, value, f"{where}.{key}")
                continue
        if leaf in node:
            raise ConfigError(f"{where}: key {key!r} is set twice")
        node[leaf] = value
    return nested


def _merge_disjoint(target: dict, extra: dict, where: str) -> None:
    for key, value in extra.items():
        if key in target:
            if isinstance(target[key], dict) and isinstance(value, dict):
                _merge_disjoint(target[key], value, f"{where}.{key}")
                continue
            raise ConfigError(f"{where}: key {key!r} is set twice")
        target[key] = value


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Return ``base`` with ``override`` applied: mappings merge, everything else replaces."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def resolve_run_config(config: dict[str, Any]) -> dict[str, Any]:
    """Validate a run config through ``harness.config`` and return its fully resolved form."""
    from harness.config import run_config_from_dict

    return run_config_from_dict(config, "run config").to_dict()


def config_hash(config: dict[str, Any]) -> str:
    """The cell id: 12 hex digits of the SHA-256 of the canonical JSON of a resolved config."""
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:12]


def _base_config(loaded: LoadedSpec) -> dict[str, Any]:
    base = loaded.spec.base
    if isinstance(base, str):
        base_path = (loaded.spec_dir / base).resolve()
        raw = load_yaml(base_path)
        if not isinstance(raw, dict):
            raise ConfigError(f"{loaded.path}: base {base!r} is not a mapping of run-config keys")
        return raw
    return base


def _check_labels(loaded: LoadedSpec, labels: dict[str, str], where: str, allow_new: bool) -> None:
    axes = loaded.spec.axes
    for axis, label in labels.items():
        if axis not in axes:
            raise ConfigError(f"{loaded.path}: {where}: unknown axis {axis!r} (axes: {', '.join(axes)})")
        if not allow_new and str(label) not in axes[axis]:
            raise ConfigError(
                f"{loaded.path}: {where}: axis {axis!r} has no label {label!r} "
                f"(labels: {', '.join(axes[axis])})"
            )


def _label_combinations(loaded: LoadedSpec) -> list[tuple[dict[str, str], dict[str, Any], list[str]]]:
    """(labels, nested overrides, provenance of each override set) for every cell, in order."""
    spec = loaded.spec
    for index, combo in enumerate(spec.exclude):
        _check_labels(loaded, combo, f"exclude[{index}]", allow_new=False)
    axis_names = list(spec.axes)
    combos = []
    value_lists = [list(spec.axes[a].items()) for a in axis_names]
    for values in itertools.product(*value_lists):
        labels = {axis: label for axis, (label, _) in zip(axis_names, values)}
        if any(all(labels[a] == str(v) for a, v in ex.items()) for ex in spec.exclude):
            continue
        overrides: dict[str, Any] = {}
        sources = []
        for axis, (label, override) in zip(axis_names, values):
            where = f"axes.{axis}.{label}"
            overrides = deep_merge(overrides, nest_overrides(override or {}, f"{loaded.path}: {where}"))
            sources.append(where)
        combos.append((labels, overrides, sources))
    for index, extra in enumerate(spec.include):
        where = f"include[{index}]"
        _check_labels(loaded, extra.labels, where, allow_new=True)
        missing = [a for a in axis_names if a not in extra.labels]
        if missing:
            raise ConfigError(f"{loaded.path}: {where}: no label for axis {', '.join(missing)}")
        overrides = {}
        sources = []
        for axis in axis_names:
            label = str(extra.labels[axis])
            if label in spec.axes[axis]:
                where_axis = f"axes.{axis}.{label}"
                override = spec.axes[axis][label] or {}
                overrides = deep_merge(overrides, nest_overrides(override, f"{loaded.path}: {where_axis}"))
                sources.append(where_axis)
        overrides = deep_merge(overrides, nest_overrides(extra.overrides, f"{loaded.path}: {where}"))
        sources.append(where)
        combos.append(({a: str(extra.labels[a]) for a in axis_names}, overrides, sources))
    seen: dict[tuple, int] = {}
    for position, (labels, _, sources) in enumerate(combos):
        key = tuple(labels.items())
        if key in seen:
            raise ConfigError(
                f"{loaded.path}: duplicate cell labels {dict(key)} ({sources[-1]} repeats an earlier cell)"
            )
        seen[key] = position
    return combos


def _resolve_cell(
    loaded: LoadedSpec, base: dict, labels: dict, overrides: dict, sources: list[str], resolver: Resolver
) -> dict[str, Any]:
    merged = deep_merge(base, overrides)
    try:
        return resolver(merged)
    except ConfigError as exc:
        culprit = _find_culprit(loaded, base, sources, resolver, str(exc))
        label_text = ",".join(f"{k}={v}" for k, v in labels.items())
        raise ConfigError(f"{loaded.path}: cell {label_text}{culprit}: {exc}") from None


def _override_set(loaded: LoadedSpec, where: str) -> dict[str, Any]:
    if where.startswith("axes."):
        _, axis, label = where.split(".", 2)
        return loaded.spec.axes[axis][label] or {}
    return loaded.spec.include[int(where[len("include[") : -1])].overrides


def _dotted_keys(value: dict[str, Any], prefix: str = "") -> set[str]:
    keys = set()
    for key, child in value.items():
        dotted = f"{prefix}{key}"
        keys.add(dotted)
        if isinstance(child, dict):
            keys |= _dotted_keys(child, dotted + ".")
    return keys


def _find_culprit(loaded: LoadedSpec, base: dict, sources: list[str], resolver: Resolver, message: str) -> str:
    """Name the override set (else the base) that sets a key the error message names."""
    named = set(re.findall(r"'([A-Za-z0-9_.\-]+)'", message))
    named |= {re.sub(r"\.\d+(?=\.|$)", "", key) for key in named}  # list indices: mixture.sources.0
    for where in reversed(sources):  # later override sets win, so blame them first
        if named & _dotted_keys(nest_overrides(_override_set(loaded, where), where)):
            return f" (from {where})"
    if named & _dotted_keys(base):
        return " (in base)"
    return ""


def expand(loaded: LoadedSpec, resolver: Resolver | None = None) -> list[Cell]:
    """Expand a spec into its cells, resolving and validating every cell's run config.

    ``resolver`` maps a merged config dict to its fully resolved form and raises ConfigError on
    an unknown key or a wrong type; the default is ``harness.config``'s.
    """
    resolver = resolver or resolve_run_config
    base = _base_config(loaded)
    cells: list[Cell] = []
    for labels, overrides, sources in _label_combinations(loaded):
        config = _resolve_cell(loaded, base, labels, overrides, sources, resolver)
        notes = [
            loaded.spec.notes[axis][label]
            for axis, label in labels.items()
            if label in loaded.spec.notes.get(axis, {})
        ]
        cells.append(Cell(id=config_hash(config), labels=labels, config=config, overrides=overrides, notes=notes))
    _check_distinct_ids(loaded, cells)
    _assign_baselines(loaded, cells)
    return cells


def _check_distinct_ids(loaded: LoadedSpec, cells: list[Cell]) -> None:
    by_id: dict[str, Cell] = {}
    for cell in cells:
        if cell.id in by_id:
            raise ConfigError(
                f"{loaded.path}: cells {by_id[cell.id].label_text()} and {cell.label_text()} resolve to "
                "the same run config (an axis label that changes nothing?)"
            )
        by_id[cell.id] = cell


def _assign_baselines(loaded: LoadedSpec, cells: list[Cell]) -> None:
    compare = loaded.spec.compare
    if compare is None:
        return
    _check_labels(loaded, compare.baseline, "compare.baseline", allow_new=True)
    index = {tuple(c.labels.items()): c for c in cells}
    matched = False
    for cell in cells:
        wanted = {**cell.labels, **{k: str(v) for k, v in compare.baseline.items()}}
        if wanted == cell.labels:
            cell.is_baseline = True
            matched = True
            continue
        baseline = index.get(tuple(wanted.items()))
        if baseline is None:
            wanted_text = ",".join(f"{k}={v}" for k, v in wanted.items())
            raise ConfigError(
                f"{loaded.path}: compare.baseline {compare.baseline} matches no cell for "
                f"{cell.label_text()} (no cell {wanted_text})"
            )
        cell.baseline = baseline.id
        matched = True
    if not matched:
        raise ConfigError(f"{loaded.path}: compare.baseline {compare.baseline} matches no cell")


def parse_only(only: Iterable[str], loaded: LoadedSpec) -> dict[str, set[str]]:
    """Parse ``--only axis=label`` filters (repeatable; same axis twice means either label)."""
    wanted: dict[str, set[str]] = {}
    for item in only:
        if "=" not in item:
            raise ConfigError(f"--only {item!r}: expected AXIS=LABEL")
        axis, label = item.split("=", 1)
        axis, label = axis.strip(), label.strip()
        if axis not in loaded.spec.axes:
            raise ConfigError(f"--only {item!r}: unknown axis {axis!r} (axes: {', '.join(loaded.spec.axes)})")
        wanted.setdefault(axis, set()).add(label)
    return wanted


def select_cells(cells: list[Cell], wanted: dict[str, set[str]]) -> list[Cell]:
    """The cells whose labels match every ``--only`` filter."""
    return [c for c in cells if all(c.labels.get(a) in labels for a, labels in wanted.items())]
