"""Run configuration: YAML + dotted overrides, strict keys and types, round trip."""

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.config import RunConfig, apply_overrides, load_run_config, parse_override, run_config_from_dict
from harness.errors import ConfigError

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


MIXTURE = "mixture:\n  sources:\n    - alpaca:experiments/data/toy_instructions.jsonl\n"


def write(tmp_path: Path, text: str, mixture: bool = True) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(text + (MIXTURE if mixture else ""))
    return path


def test_yaml_and_overrides(tmp_path):
    path = write(tmp_path, "seed: 3\ntrain:\n  steps: 10\n  lr: 2.0e-5\nmesh:\n  fsdp: -1\n  data: 1\n")
    config = load_run_config(path, ["train.lr=1e-4", "checkpoint.async=false", "peft.targets=[q,k,v]"])
    assert config.seed == 3
    assert config.train.lr == pytest.approx(1e-4)  # YAML 1.1 reads 1e-4 as a string; we read a float
    assert config.train.steps == 10
    assert config.checkpoint.async_save is False
    assert config.peft.targets == ["q", "k", "v"]
    assert (config.mesh.data, config.mesh.fsdp) == (1, -1)


@pytest.mark.parametrize(
    "overrides, key",
    [
        (["train.lrr=1"], "train.lrr"),
        (["nosuch.section=1"], "nosuch"),
        (["train.lr=fast"], "train.lr"),
        (["train.global_batch=8.5"], "train.global_batch"),
        (["train.steps='10'"], "train.steps"),  # a quoted string is not silently an int
        (["model.compute_dtype=float16"], "model.compute_dtype"),
        (["peft.targets=[q,x]"], "peft.targets"),
    ],
)
def test_unknown_key_or_wrong_type_names_the_key(tmp_path, overrides, key):
    path = write(tmp_path, "train:\n  steps: 10\n")
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_run_config(path, overrides)


def test_key_set_twice_in_yaml_names_key_and_line(tmp_path):
    path = write(tmp_path, "train:\n  steps: 10\n  lr: 1.0e-4\n  lr: 2.0e-4\n", mixture=False)
    with pytest.raises(ConfigError, match=r"run\.yaml:4: key 'lr' is set twice"):
        load_run_config(path)


def test_key_set_twice_on_command_line(tmp_path):
    path = write(tmp_path, "train:\n  steps: 10\n")
    with pytest.raises(ConfigError, match="train.lr' is set twice"):
        load_run_config(path, ["train.lr=1e-4", "train.lr=2e-4"])


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["train.micro_batch=3"], "micro_batch=3 does not divide train.global_batch=8"),
        (["train.epochs=1"], "not both"),
        (["train.warmup_steps=2", "train.warmup_ratio=0.1"], "warmup_steps or train.warmup_ratio"),
        (["mesh.data=-1", "mesh.fsdp=-1"], "at most one axis may be -1"),
        (["mesh.tensor=0"], "mesh.tensor=0"),
    ],
)
def test_inconsistent_values_say_what_to_change(tmp_path, overrides, message):
    path = write(tmp_path, "train:\n  steps: 10\n  global_batch: 8\n")
    with pytest.raises(ConfigError, match=message):
        load_run_config(path, overrides)


def test_required_sections():
    mixture = {"sources": ["alpaca:x.json"]}
    with pytest.raises(ConfigError, match="train.steps=N or train.epochs=E"):
        run_config_from_dict({"train": {"lr": 1e-4}, "mixture": mixture})
    with pytest.raises(ConfigError, match="key 'mixture': Field required"):
        run_config_from_dict({"train": {"steps": 1}})
    with pytest.raises(ConfigError, match="unknown key 'mixture.sources.0.sampel'"):
        run_config_from_dict({"train": {"steps": 1}, "mixture": {"sources": [{"spec": "alpaca:x", "sampel": 3}]}})


def test_override_into_a_value_is_an_error():
    with pytest.raises(ConfigError, match="'train.lr' is a value"):
        apply_overrides({"train": {"lr": 1.0}}, ["train.lr.x=1"])
    with pytest.raises(ConfigError, match="expected key=value"):
        parse_override("train.lr")


def test_to_yaml_round_trip(tmp_path):
    config = load_run_config(write(tmp_path, "train:\n  steps: 7\n"), ["labels={mixture: flan}", "optimizer.clip_norm=null"])
    text = config.to_yaml()
    again = load_run_config(write(tmp_path, text, mixture=False))
    assert again == config
    assert "async: true" in text  # the YAML key, not the Python field name
    assert again.optimizer.clip_norm is None


@pytest.mark.parametrize("path", sorted(EXPERIMENTS.glob("train_*.yaml")), ids=lambda p: p.name)
def test_experiment_configs_validate(path):
    assert isinstance(load_run_config(path), RunConfig)


@settings(max_examples=40, deadline=None)
@given(
    lr=st.floats(min_value=1e-8, max_value=1.0, allow_nan=False),
    steps=st.integers(min_value=1, max_value=10**6),
    micro_div=st.sampled_from([1, 2, 4, 8]),
    schedule=st.sampled_from(["cosine", "linear", "constant"]),
)
def test_round_trip_property(tmp_path_factory, lr, steps, micro_div, schedule):
    config = run_config_from_dict(
        {"train": {"lr": lr, "steps": steps, "global_batch": 8, "micro_batch": 8 // micro_div, "schedule": schedule},
         "mixture": {"sources": [{"spec": "alpaca:x.json", "sample": 5}], "strategy": "concat"}}
    )
    path = tmp_path_factory.mktemp("rt") / "c.yaml"
    path.write_text(config.to_yaml())
    assert load_run_config(path) == config
    assert config.train.accumulation_steps == micro_div
