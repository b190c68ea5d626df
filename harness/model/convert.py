"""Weights in and out of the harness: Hugging Face directories and GGUF files.

* ``load_hf(path, dtype=, mesh=)`` - a Hugging Face LLaMA directory (config.json + safetensors),
  streamed block by block (``harness.model.convert_hf``);
* ``save_hf(model, path, tokenizer=)`` - the same format out, for transformers or vLLM;
* ``load_gguf(path, dtype=)`` - a llama.cpp GGUF file, dequantised (``harness.model.convert_gguf``).

The HF <-> harness parameter layout is the one table ``WEIGHT_MAP`` in
``harness.model.convert_weights``.
"""

from harness.model.convert_gguf import config_from_gguf, load_gguf
from harness.model.convert_hf import config_from_hf, config_to_hf, load_hf, save_hf
from harness.model.convert_weights import WEIGHT_MAP

__all__ = ["WEIGHT_MAP", "config_from_gguf", "config_from_hf", "config_to_hf", "load_gguf", "load_hf", "save_hf"]
