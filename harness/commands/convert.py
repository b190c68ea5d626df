"""``harness convert SRC DST``: write any model the harness can load as a Hugging Face directory.

``SRC`` is anything ``harness.model.loading.load_model`` accepts (``gguf:FILE``, ``hf:DIR``, a
run directory or checkpoint, ``smollm2-135m``, a preset); ``DST`` receives config.json,
safetensors shards (<= 5 GB, with an index when more than one), and the tokenizer files when the
source has a tokenizer. LoRA adapters of a trained run are merged into the written weights. The
result loads with ``transformers.AutoModelForCausalLM.from_pretrained(DST)`` and with vLLM.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from harness.errors import ConfigError

DTYPES = ("float32", "bfloat16", "float16")


def convert(src: str, dst: Path, dtype: str = "float32", overwrite: bool = False) -> dict:
    """Load ``src`` and save it to ``dst`` in Hugging Face format; returns a summary."""
    if dtype not in DTYPES:
        raise ConfigError(f"--dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
    if dst.exists() and any(dst.iterdir()) and not overwrite:
        raise ConfigError(f"{dst} exists and is not empty; pass --overwrite to replace its weights")
    from harness.model.convert_hf import checkpoint_nbytes, save_hf
    from harness.model.loading import load_model

    model, tokenizer = load_model(src, dtype=dtype)
    save_hf(model, dst, tokenizer=tokenizer, dtype=dtype)
    return {
        "source": src,
        "output": str(dst),
        "dtype": dtype,
        "parameters": model.config.num_params(),
        "bytes": checkpoint_nbytes(dst),
        "tokenizer": tokenizer is not None,
        "files": sorted(p.name for p in dst.iterdir()),
    }


def register(app: typer.Typer) -> None:
    """Add ``harness convert``."""

    @app.command("convert")
    def convert_command(
        src: str = typer.Argument(..., help="gguf:FILE, hf:DIR, a run directory/checkpoint, or a preset"),
        dst: Path = typer.Argument(..., help="output directory (Hugging Face format)"),
        dtype: str = typer.Option("float32", "--dtype", help="dtype of the written weights"),
        overwrite: bool = typer.Option(False, "--overwrite", help="write into a non-empty DST"),
        as_json: bool = typer.Option(False, "--json", help="print the summary as JSON"),
    ) -> None:
        """Convert a model to a Hugging Face directory (config.json + safetensors + tokenizer)."""
        summary = convert(src, dst, dtype=dtype, overwrite=overwrite)
        if as_json:
            typer.echo(json.dumps(summary, indent=2))
            return
        typer.echo(
            f"wrote {summary['output']}: {summary['parameters']:,} parameters, "
            f"{summary['bytes'] / 1e6:.1f} MB {dtype}"
            + (", tokenizer" if summary["tokenizer"] else ", no tokenizer")
        )
