"""Grid specs: deterministic expansion, stable ids, baselines, and every bad-input message."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.cli import main
from harness.errors import ConfigError
from harness.grid.spec import config_hash, expand, load_grid_spec, parse_only, select_cells

SPEC = """
name: demo
base:
  model: {init: tiny}
  mixture: {sources: ["sharegpt:conversations.json"]}
  train: {steps: 4, global_batch: 2, lr: 1.0e-3}
axes:
  size:
    small: {model.param_dtype: float32}
    big: {model: {param_dtype: bfloat16}}
  data:
    flan: {train.lr: 2.0e-3}
    sharegpt: {train.lr: 3.0e-3}
    self_instruct: {train.lr: 4.0e-3}
exclude:
  - {size: big, data: sharegpt}
include:
  - labels: {size: small, data: extra}
    overrides: {train.lr: 5.0e-3, train.steps: 6}
compare:
  baseline: {data: self_instruct}
notes:
  data: {extra: "built by hand"}
"""


def write(tmp_path: Path, text: str, name: str = "grid.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_expansion_order_labels_and_config(tmp_path):
    cells = expand(load_grid_spec(write(tmp_path, SPEC)))
    assert [c.label_text() for c in cells] == [
        "size=small,data=flan", "size=small,data=sharegpt", "size=small,data=self_instruct",
        "size=big,data=flan", "size=big,data=self_instruct", "size=small,data=extra",
    ]
    by_label = {c.label_text(): c for c in cells}
    big_flan = by_label["size=big,data=flan"].config
    assert big_flan["model"]["param_dtype"] == "bfloat16" and big_flan["train"]["lr"] == 2e-3
    extra = by_label["size=small,data=extra"]
    assert extra.config["train"]["lr"] == 5e-3 and extra.config["train"]["steps"] == 6
    assert extra.notes == ["built by hand"]
    # the resolved config has every default filled in (it is what train receives)
    assert "optimizer" in big_flan and "checkpoint" in big_flan


def test_ids_are_hashes_of_resolved_configs_and_stable(tmp_path):
    path = write(tmp_path, SPEC)
    first = expand(load_grid_spec(path))
    second = expand(load_grid_spec(path))
    assert [c.id for c in first] == [c.id for c in second]
    assert len({c.id for c in first}) == len(first)
    assert all(c.id == config_hash(c.config) for c in first)
    # change one hyper-parameter of one label: that label's cells get new ids, the rest are found again
    changed = expand(load_grid_spec(write(tmp_path, SPEC.replace("flan: {train.lr: 2.0e-3}",
                                                              "flan: {train.lr: 2.5e-3}"), "b.yaml")))
    for old, new in zip(first, changed):
        assert (old.id == new.id) == (old.labels["data"] != "flan")


def test_baselines_are_same_size_self_instruct(tmp_path):
    cells = expand(load_grid_spec(write(tmp_path, SPEC)))
    by_label = {c.label_text(): c for c in cells}
    small_base = by_label["size=small,data=self_instruct"]
    big_base = by_label["size=big,data=self_instruct"]
    assert small_base.is_baseline and small_base.baseline is None
    assert by_label["size=small,data=flan"].baseline == small_base.id
    assert by_label["size=small,data=extra"].baseline == small_base.id
    assert by_label["size=big,data=flan"].baseline == big_base.id


def test_only_filters(tmp_path):
    loaded = load_grid_spec(write(tmp_path, SPEC))
    cells = expand(loaded)
    picked = select_cells(cells, parse_only(["size=big"], loaded))
    assert [c.labels["data"] for c in picked] == ["flan", "self_instruct"]
    with pytest.raises(ConfigError, match="unknown axis 'model'"):
        parse_only(["model=7b"], loaded)


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("exclude:\n  - {size: big, data: sharegpt}", "exclude:\n  - {sise: big}", "exclude\\[0\\]: unknown axis 'sise'"),
        ("exclude:\n  - {size: big, data: sharegpt}", "exclude:\n  - {size: huge}", "axis 'size' has no label 'huge'"),
        ("baseline: {data: self_instruct}", "baseline: {dataset: self_instruct}", "compare.baseline: unknown axis 'dataset'"),
        ("baseline: {data: self_instruct}", "baseline: {data: alpaca}", "compare.baseline .* matches no cell"),
        ("    sharegpt: {train.lr: 3.0e-3}", "    flan: {train.lr: 3.0e-3}", "duplicate key 'flan'"),
        ("labels: {size: small, data: extra}", "labels: {size: small, data: flan}", "duplicate cell labels"),
        ("flan: {train.lr: 2.0e-3}", "flan: {train.lrr: 2.0e-3}", "from axes.data.flan.*unknown key 'train.lrr'"),
        ("flan: {train.lr: 2.0e-3}", "flan: {train.lr: fast}", "from axes.data.flan.*train.lr"),
        ("  train: {steps: 4", "  trian: {steps: 4", "in base.*unknown key 'trian'"),
        ("compare:", "compares:", "compares: Extra inputs"),
    ],
)
def test_bad_specs_fail_naming_the_problem(tmp_path, old, new, message):
    assert old in SPEC
    path = write(tmp_path, SPEC.replace(old, new))
    with pytest.raises(ConfigError, match=message):
        expand(load_grid_spec(path))


def test_excluded_baseline_is_an_error(tmp_path):
    text = SPEC.replace("  - {size: big, data: sharegpt}", "  - {size: big, data: self_instruct}")
    with pytest.raises(ConfigError, match="matches no cell for size=big,data=flan"):
        expand(load_grid_spec(write(tmp_path, text)))


def test_labels_that_change_nothing_are_an_error(tmp_path):
    text = SPEC.replace("sharegpt: {train.lr: 3.0e-3}", "sharegpt: {train.lr: 2.0e-3}")
    with pytest.raises(ConfigError, match="resolve to the same run config"):
        expand(load_grid_spec(write(tmp_path, text)))


@settings(max_examples=40, deadline=None)
@given(st.dictionaries(st.sampled_from(["lr", "steps", "global_batch"]), st.integers(1, 64), min_size=1))
def test_id_ignores_key_order(values):
    forward = {"train": dict(values)}
    backward = {"train": dict(reversed(list(values.items())))}
    assert config_hash(forward) == config_hash(backward)


def test_cli_dry_run_table_and_json(tmp_path, capsys):
    path = write(tmp_path, SPEC)
    main(["grid", str(path), "--dry-run", "--no-plan"])
    out = capsys.readouterr().out
    cells = expand(load_grid_spec(path))
    assert "6 of 6 cells" in out
    for cell in cells:
        assert cell.id in out
    assert "| size | data | id | instances | steps | mem/device | baseline | note |" in out
    main(["grid", str(path), "--dry-run", "--json", "--only", "data=flan"])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["labels"] for line in lines] == [{"size": "small", "data": "flan"}, {"size": "big", "data": "flan"}]
    assert lines[0]["config"]["train"]["lr"] == 2e-3 and lines[0]["id"] == cells[0].id


def test_cli_bad_spec_exits_2_with_message(tmp_path, capsys):
    path = write(tmp_path, SPEC.replace("flan: {train.lr: 2.0e-3}", "flan: {train.lrr: 2.0e-3}"))
    with pytest.raises(SystemExit) as exc:
        main(["grid", str(path), "--dry-run"])
    assert exc.value.code == 2
    assert "unknown key 'train.lrr'" in capsys.readouterr().err
