"""Training metrics: metrics.jsonl, the terminal progress bar, optional TensorBoard, and MFU.

FLOP convention (``train_flops_per_token``): the PaLM paper's (appendix B), as MaxText and
nanoGPT count it - 6 FLOPs per matmul weight per token (forward 2, backward 4: activation and
weight gradients), the LM head included and the embedding lookup excluded, plus the attention
score and value matmuls, ``12 x layers x heads x head_dim x seq_len`` per token over the full
(non-causal) sequence (``LlamaConfig.flops_per_token``). With LoRA the frozen weights get no
weight gradient, so their matmuls count 4 instead of 6, and the adapters count 6 each. Tokens are
all ``B x L`` positions of the batch, padding included (the work the device does).
MFU = achieved FLOP/s / (devices x peak dense FLOP/s of one device); the peak comes from
``logging.peak_flops_per_device`` or the table below (bf16 dense, no sparsity), and is unknown
(MFU not reported) on CPUs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from harness.atomic import write_text_atomic

# Peak dense bf16 FLOP/s per device (vendor data sheets; SXM parts for NVIDIA).
PEAK_FLOPS: dict[str, float] = {
    "h200": 989e12,
    "h100": 989e12,
    "a100": 312e12,
    "a800": 312e12,
    "l40s": 362e12,
    "a10": 125e12,
    "v100": 125e12,
    "tpu v4": 275e12,
    "tpu v5 lite": 197e12,
    "tpu v5e": 197e12,
    "tpu v5p": 459e12,
    "tpu v5": 459e12,
    "tpu v6": 918e12,
}


def peak_flops(device_kind: str) -> float | None:
    """Peak dense bf16 FLOP/s of a device from its ``device_kind`` string (None if unknown)."""
    kind = device_kind.lower()
    for name, flops in PEAK_FLOPS.items():
        if name in kind:
            return flops
    return None


def train_flops_per_token(config, seq_len: int, *, lora_params: int = 0) -> float:
    """Training FLOPs per token for ``config`` (a LlamaConfig) at ``seq_len``; see module doc."""
    full = config.flops_per_token(seq_len)
    if lora_params == 0:
        return full
    attention = 12.0 * config.num_layers * config.num_heads * config.dim_per_head * seq_len
    base_matmul = (full - attention) / 6.0
    return 4.0 * base_matmul + 6.0 * lora_params + attention


class MetricsLog:
    """Appends one JSON object per logged step to ``metrics.jsonl`` (and TensorBoard if asked)."""

    def __init__(self, path: Path, *, tensorboard_dir: Path | None = None, enabled: bool = True):
        self.path = path
        self.enabled = enabled
        self._tb = None
        if enabled and tensorboard_dir is not None:
            try:
                from tensorboardX import SummaryWriter
            except ModuleNotFoundError:
                from harness.errors import ConfigError

                raise ConfigError(
                    "logging.tensorboard=true needs tensorboardX (pip install 'harness[tensorboard]'); "
                    "install it or set logging.tensorboard=false"
                ) from None
            self._tb = SummaryWriter(str(tensorboard_dir))

    def truncate_after(self, step: int) -> None:
        """Drop records of steps after ``step`` (a resumed run recomputes them)."""
        if not self.enabled or not self.path.is_file():
            return
        kept = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except ValueError:  # the last line of a killed run may be cut short
                continue
            if record.get("step", 0) <= step:
                kept.append(line)
        write_text_atomic(self.path, "".join(f"{line}\n" for line in kept))

    def write(self, record: dict[str, Any]) -> None:
        """Append ``record`` as one line (a single write, flushed)."""
        if not self.enabled:
            return
        line = json.dumps(record, allow_nan=True) + "\n"
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(line)
            handle.flush()
        if self._tb is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)) and value is not None:
                    self._tb.add_scalar(f"train/{key}", value, record["step"])

    def close(self) -> None:
        """Flush and close TensorBoard (metrics.jsonl is closed after every write)."""
        if self._tb is not None:
            self._tb.close()


class Progress:
    """A tqdm progress bar with ETA on stderr (only where enabled: process 0, logging.progress)."""

    def __init__(self, total: int, initial: int, enabled: bool):
        self._bar = None
        if enabled:
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, file=sys.stderr,
                             mininterval=0.5, smoothing=0.1)

    def advance(self, steps: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(steps)

    def show(self, record: dict[str, Any]) -> None:
        if self._bar is not None:
            shown = {"loss": f"{record['loss']:.4f}", "lr": f"{record['lr']:.2e}"}
            if record.get("tokens_per_s"):
                shown["tok/s"] = f"{record['tokens_per_s']:.0f}"
            self._bar.set_postfix(shown, refresh=False)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
