"""``harness generate``: a chat reply from any model the harness can load.

The user message (``--prompt``, repeatable: several prompts are decoded as one batch) and an
optional ``--system`` message are rendered with a chat template (default: the checkpoint's own
Jinja ``chat_template``, i.e. the ``tokenizer`` template of :mod:`harness.data.templates`) up to
the assistant-turn opener, and the model continues from there until an end-of-turn token, a
``--stop`` string or ``--max-new-tokens``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import typer

from harness.errors import ConfigError


@dataclass(frozen=True)
class GenerateRequest:
    """What ``harness generate`` was asked for."""

    model: str
    prompts: tuple[str, ...]
    system: str | None = None
    template: str = "tokenizer"
    raw: bool = False
    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    stop: tuple[str, ...] = ()
    batch_size: int | None = None
    tokenizer: str | None = None
    dtype: str = "float32"


def prompt_texts(request: GenerateRequest, tokenizer) -> list[str]:
    """The text the model continues for each prompt: the rendered chat, or the prompt itself (raw)."""
    if request.raw:
        if request.system is not None:
            raise ConfigError("--system has no effect with --raw (no chat template is applied)")
        return list(request.prompts)
    from harness.data.records import Message
    from harness.data.templates import render_prompt

    texts = []
    for prompt in request.prompts:
        messages = [Message("user", prompt)]
        if request.system is not None:
            messages.insert(0, Message("system", request.system))
        texts.append(render_prompt(request.template, messages, tokenizer))
    return texts


def run_generate(request: GenerateRequest) -> list[dict]:
    """Load the model, generate, and return one record per prompt (prompt, text, token counts)."""
    from harness.model.generate import generate
    from harness.model.loading import load_model
    from harness.model.tokenizer import load_tokenizer

    if not request.prompts:
        raise ConfigError("--prompt is required (repeat it for several prompts)")
    model, tokenizer = load_model(request.model, dtype=request.dtype)
    if request.tokenizer is not None:
        tokenizer = load_tokenizer(request.tokenizer)
    if tokenizer is None:
        raise ConfigError(
            f"model {request.model!r} has no tokenizer; pass --tokenizer (e.g. smollm2-135m, hf:DIR, gguf:FILE)"
        )
    texts = prompt_texts(request, tokenizer)
    ids = [tokenizer.encode(text) for text in texts]
    outputs = generate(
        model, ids, request.max_new_tokens,
        temperature=request.temperature, top_p=request.top_p, seed=request.seed,
        eos_ids=tokenizer.eot_ids, stop_strings=request.stop, tokenizer=tokenizer,
        batch_size=request.batch_size,
    )
    return [
        {
            "prompt": prompt,
            "reply": tokenizer.decode(new, skip_special_tokens=True),
            "prompt_tokens": len(prompt_ids),
            "new_tokens": len(new),
        }
        for prompt, prompt_ids, new in zip(request.prompts, ids, outputs)
    ]


def register(app: typer.Typer) -> None:
    """Add ``harness generate``."""

    @app.command("generate")
    def generate_command(
        prompt: list[str] = typer.Option([], "--prompt", "-p", help="user message (repeat for a batch)"),
        model: str = typer.Option("smollm2-135m", "--model", "-m",
                                  help="smollm2-135m (embedded), a preset, hf:DIR, gguf:FILE, or a run directory"),
        system: str | None = typer.Option(None, "--system", help="system message"),
        template: str = typer.Option("tokenizer", "--template",
                                     help="chat template: tokenizer (the checkpoint's own), chatml, vicuna_v1.1, ..."),
        raw: bool = typer.Option(False, "--raw", help="feed the prompt text as is, without a chat template"),
        max_new_tokens: int = typer.Option(256, "--max-new-tokens", "-n", min=0),
        temperature: float = typer.Option(0.0, "--temperature", "-t", help="0 = greedy"),
        top_p: float = typer.Option(1.0, "--top-p"),
        seed: int = typer.Option(0, "--seed"),
        stop: list[str] = typer.Option([], "--stop", help="stop string (repeatable); cut before it"),
        batch_size: int | None = typer.Option(None, "--batch-size", min=1),
        tokenizer: str | None = typer.Option(None, "--tokenizer", help="tokenizer spec, for models without one"),
        dtype: str = typer.Option("float32", "--dtype", help="parameter and compute dtype"),
        as_json: bool = typer.Option(False, "--json", help="print one JSON object per prompt"),
    ) -> None:
        """Print the model's chat reply to each --prompt."""
        request = GenerateRequest(
            model=model, prompts=tuple(prompt), system=system, template=template, raw=raw,
            max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed,
            stop=tuple(stop), batch_size=batch_size, tokenizer=tokenizer, dtype=dtype,
        )
        records = run_generate(request)
        for index, record in enumerate(records):
            if as_json:
                typer.echo(json.dumps(record, ensure_ascii=False))
            elif len(records) == 1:
                typer.echo(record["reply"])
            else:
                typer.echo(f"=== {index}: {record['prompt']}\n{record['reply']}")
