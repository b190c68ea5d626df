"""One entry point for every kind of model the harness can run: ``load_model(spec)``.

=====================  =================================================================
spec                   what is loaded
=====================  =================================================================
``smollm2-135m``       the embedded SmolLM2-135M-Instruct GGUF and its tokenizer
other preset names     random initialisation of ``get_config(name)`` (``nnx.Rngs(seed)``)
``hf:DIR`` or a DIR    a Hugging Face directory (config.json); its tokenizer when present
with config.json
``gguf:FILE`` or       a GGUF file and the tokenizer in its metadata
a ``.gguf`` path
a run directory,       the trained model via ``harness.train.checkpoint.load_from_run``
checkpoints/ or a step
=====================  =================================================================
"""

from __future__ import annotations

import os
from pathlib import Path

from harness.errors import ConfigError
from harness.model.llama import PRESETS, Llama, get_config

EMBEDDED_MODEL = "smollm2-135m"


def _tokenizer(spec: str):
    from harness.model.tokenizer import load_tokenizer

    return load_tokenizer(spec)


def _hf_tokenizer(directory: Path):
    if not (directory / "tokenizer.json").is_file():
        return None
    return _tokenizer(f"hf:{directory}")


def init_model(name: str, *, dtype: str = "float32", mesh=None, seed: int = 0) -> Llama:
    """A randomly initialised preset, exactly ``Llama(config, rngs=nnx.Rngs(seed))``.

    With ``mesh`` the same values are then placed by their logical axes, so a seed gives the same
    weights on any mesh (a run resumed or rebuilt on another mesh starts from the same base).
    Random init is for tests and small runs; big models come from ``hf:`` / ``gguf:`` weights,
    which stream straight to their shards.
    """
    from flax import nnx

    from harness.model.sharding import shard_model

    config = get_config(name, param_dtype=dtype, compute_dtype=dtype)
    model = Llama(config, rngs=nnx.Rngs(seed))
    return model if mesh is None else shard_model(model, mesh)


def load_model(spec: str | os.PathLike, *, dtype: str = "float32", mesh=None, seed: int = 0):
    """``(model, tokenizer or None)`` for ``spec`` (see the module docstring for the forms).

    ``dtype`` is the parameter and compute dtype; ``mesh`` places parameters by their logical
    axes; ``seed`` seeds random initialisation of presets. An unrecognised spec is a ConfigError
    that lists the accepted forms.
    """
    from harness.model.convert_gguf import load_gguf
    from harness.model.convert_hf import load_hf

    text = str(spec)
    if text == EMBEDDED_MODEL:
        from harness.model.assets import smollm2_gguf_path

        return load_gguf(smollm2_gguf_path(), dtype=dtype, mesh=mesh), _tokenizer(EMBEDDED_MODEL)
    if text in PRESETS:
        return init_model(text, dtype=dtype, mesh=mesh, seed=seed), None
    if text.startswith("hf:"):
        directory = Path(text[3:]).expanduser()
        return load_hf(directory, dtype=dtype, mesh=mesh), _hf_tokenizer(directory)
    if text.startswith("gguf:"):
        file = Path(text[5:]).expanduser()
        return load_gguf(file, dtype=dtype, mesh=mesh), _tokenizer(f"gguf:{file}")
    path = Path(text).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return load_gguf(path, dtype=dtype, mesh=mesh), _tokenizer(f"gguf:{path}")
    if path.is_dir() and (path / "config.json").is_file():
        return load_hf(path, dtype=dtype, mesh=mesh), _hf_tokenizer(path)
    if path.exists():
        try:
            from harness.train.checkpoint import is_run_or_checkpoint, load_from_run
        except ModuleNotFoundError as exc:
            if exc.name != "harness.train.checkpoint":
                raise
        else:
            if is_run_or_checkpoint(path):
                return load_from_run(path, dtype=dtype, mesh=mesh)
    raise ConfigError(
        f"model {text!r}: expected a preset ({', '.join(PRESETS)}), 'hf:DIR', 'gguf:FILE', a "
        "Hugging Face directory, a .gguf file, or a run directory / checkpoint"
        + ("" if path.exists() else f" (no such path {path})")
    )
