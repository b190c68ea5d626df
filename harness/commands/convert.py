"""``harness convert SRC DST``: write any model the harness can load as a Hugging Face directory.

``SRC`` is anything ``harness.model.loading.load_model`` accepts (``gguf:FILE``, ``hf:DIR``, a
run directory or checkpoint, ``smollm2-135m``, a preset); ``DST`` receives config.json,
safetensors shards (<= 5 GB, with an index when more than one), and the tokenizer files when the
source has a tokenizer. LoRA adapters of a trained run are merged into the written weights. The
result loads with ``transformers.AutoModelForCausalLM.from_pretrained(DST)`` and with vLLM.

``harness convert RUN_DIR DST --adapter-only`` writes only a LoRA run's adapters, in the Hugging
Face PEFT format (adapter_config.json + adapter_model.safetensors, ``harness.model.adapters``),
for ``peft.PeftModel.from_pretrained`` on top of the run's base (``harness convert <model.init>``).
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


def convert_adapter(src: str, dst: Path, overwrite: bool = False) -> dict:
    """Write the LoRA adapters of the run (or checkpoint) ``src`` to ``dst`` as a PEFT adapter."""
    if dst.exists() and any(dst.iterdir()) and not overwrite:
        raise ConfigError(f"{dst} exists and is not empty; pass --overwrite to replace its files")
    from harness.model.adapters import save_peft_adapter
    from harness.model.peft import count_trainable, lora_targets
    from harness.train.checkpoint import is_run_or_checkpoint, load_from_run, run_meta

    if not is_run_or_checkpoint(src):
        raise ConfigError(f"--adapter-only: {src!r} is not a run directory or checkpoint of a LoRA run")
    meta = run_meta(src)
    if (meta.get("peft") or {}).get("method") != "lora":
        raise ConfigError(f"--adapter-only: {src} is not a LoRA run (peft.method={(meta.get('peft') or {}).get('method')!r})")
    model, tokenizer = load_from_run(src)
    if not lora_targets(model):
        raise ConfigError(f"--adapter-only: the model of {src} has no LoRA adapters")
    base = (meta.get("base") or {}).get("init")
    base_name = base.split(":", 1)[1] if base and base.startswith(("hf:", "gguf:")) else base
    save_peft_adapter(model, dst, base_model_name_or_path=base_name)
    if tokenizer is not None:
        tokenizer.save(dst)
    return {
        "source": src,
        "output": str(dst),
        "base_model_name_or_path": base_name,
        "adapter_parameters": count_trainable(model),
        "bytes": (dst / "adapter_model.safetensors").stat().st_size,
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
        adapter_only: bool = typer.Option(
            False, "--adapter-only", help="write only a LoRA run's adapters, in the Hugging Face PEFT format"
        ),
    ) -> None:
        """Convert a model to a Hugging Face directory (config.json + safetensors + tokenizer)."""
        if adapter_only:
            summary = convert_adapter(src, dst, overwrite=overwrite)
            if as_json:
                typer.echo(json.dumps(summary, indent=2))
            else:
                typer.echo(f"wrote {summary['output']}: PEFT LoRA adapter, {summary['adapter_parameters']:,} "
                           f"parameters, {summary['bytes'] / 1e6:.2f} MB float32")
            return
        summary = convert(src, dst, dtype=dtype, overwrite=overwrite)
        if as_json:
            typer.echo(json.dumps(summary, indent=2))
            return
        typer.echo(
            f"wrote {summary['output']}: {summary['parameters']:,} parameters, "
            f"{summary['bytes'] / 1e6:.1f} MB {dtype}"
            + (", tokenizer" if summary["tokenizer"] else ", no tokenizer")
        )
