"""On-disk cache of tokenized sources, keyed by (source content, template, format options, tokenizer).

A cached source is a directory ``<cache>/tokenized/<key>/`` holding ``ids.npy`` (int32, all
examples concatenated), ``mask.npy`` (bool), ``starts.npy`` (int64, entry i is
``[starts[i], starts[i+1])``), ``origin.npy`` (int32, the source example each entry came from)
and ``meta.json`` (counts). The key is a SHA-256 of the examples' content (ids, roles, texts),
the template (name and, for ``tokenizer``, its Jinja source), every DataConfig field that changes
tokenization, the tokenizer (its serialized JSON and special tokens), the demonstration seed and
:data:`CACHE_VERSION`, so any change re-tokenizes and nothing stale is ever read. Writes go to a
temporary directory renamed into place (atomic; concurrent writers are harmless).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from harness.data.masking import TokenizeCounts

CACHE_VERSION = 1
FORMAT_FIELDS = ("template", "max_length", "multiturn", "too_long", "system_prompt", "identity_name",
                 "identity_org", "num_demonstrations", "demonstration_key")


def default_cache_dir(configured: str | None = None) -> Path:
    """The configured directory, else $HARNESS_CACHE, else ~/.cache/harness."""
    if configured:
        return Path(configured).expanduser()
    return Path(os.environ.get("HARNESS_CACHE") or Path.home() / ".cache" / "harness")


@dataclass
class TokenizedSource:
    """All tokenized entries of one source, stored flat."""

    name: str
    ids: np.ndarray
    mask: np.ndarray
    starts: np.ndarray
    origin: np.ndarray
    counts: TokenizeCounts
    key: str = ""
    cache_hit: bool = False

    def __len__(self) -> int:
        return len(self.starts) - 1

    def lengths(self) -> np.ndarray:
        return np.diff(self.starts)

    def entry(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        begin, end = self.starts[index], self.starts[index + 1]
        return self.ids[begin:end], self.mask[begin:end]


def examples_digest(examples) -> str:
    """SHA-256 of the examples' ids, sources, roles and contents (what tokenization depends on)."""
    digest = hashlib.sha256()
    for example in examples:
        digest.update(f"{len(example.id)}:{example.id}{len(example.source)}:{example.source}".encode())
        task = str(example.meta.get("task", ""))
        digest.update(f"{len(task)}:{task}".encode())
        for message in example.messages:
            digest.update(f"{message.role}{len(message.content)}:".encode())
            digest.update(message.content.encode("utf-8", "surrogatepass"))
    return digest.hexdigest()


def tokenizer_fingerprint(tokenizer) -> str:
    """SHA-256 of the tokenizer's serialized form and its special tokens and chat template."""
    payload = json.dumps([tokenizer.backend.to_str(), tokenizer.bos_token, tokenizer.eos_token,
                          tokenizer.pad_token, tokenizer.chat_template])
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def cache_key(content_digest: str, data_config, template, tokenizer_digest: str, seed: int) -> str:
    """The cache key of one (source, template, format options, tokenizer, demo seed)."""
    options = {name: getattr(data_config, name) for name in FORMAT_FIELDS}
    payload = json.dumps({
        "version": CACHE_VERSION, "content": content_digest, "options": options,
        "template": getattr(template, "source", template.name), "tokenizer": tokenizer_digest,
        "seed": seed if data_config.num_demonstrations else None,
    }, sort_keys=True)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:32]


def load(root: Path, key: str, name: str) -> TokenizedSource | None:
    """The cached entry for ``key``, or None when absent or unreadable."""
    folder = root / "tokenized" / key
    try:
        meta = json.loads((folder / "meta.json").read_text())
        arrays = {n: np.load(folder / f"{n}.npy", mmap_mode="r") for n in ("ids", "mask", "starts", "origin")}
    except (OSError, ValueError):
        return None
    return TokenizedSource(name, arrays["ids"], arrays["mask"], np.asarray(arrays["starts"]),
                           np.asarray(arrays["origin"]), TokenizeCounts(**meta["counts"]), key, cache_hit=True)


def save(root: Path, source: TokenizedSource) -> None:
    """Write ``source`` under its key atomically (temporary directory, then rename)."""
    parent = root / "tokenized"
    parent.mkdir(parents=True, exist_ok=True)
    final = parent / source.key
    if final.exists():
        return
    tmp = Path(tempfile.mkdtemp(prefix=f".{source.key}.", dir=parent))
    try:
        for name in ("ids", "mask", "starts", "origin"):
            np.save(tmp / f"{name}.npy", np.asarray(getattr(source, name)))
        (tmp / "meta.json").write_text(json.dumps({"name": source.name, "counts": source.counts.as_dict()}))
        os.replace(tmp, final)
    except OSError:
        if final.exists():  # another process finished first
            shutil.rmtree(tmp, ignore_errors=True)
            return
        shutil.rmtree(tmp, ignore_errors=True)
        raise
