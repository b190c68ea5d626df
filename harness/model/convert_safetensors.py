"""Streaming safetensors I/O: read row blocks of one tensor, write shards tensor by tensor.

The format is an 8-byte little-endian header length, a JSON header (``name -> {dtype, shape,
data_offsets}`` plus ``__metadata__``), then the raw row-major tensor bytes. Reading goes through
``os.pread`` into fresh buffers rather than a memory map: the pages of a mapped multi-GB file count
towards the process's resident set for as long as the map lives, which would double the host peak
of a load (model + file). Writing streams each tensor straight to disk, so saving never holds a
shard in memory. Files written here are read back by ``safetensors.safe_open`` and transformers.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import ml_dtypes
import numpy as np

from harness.errors import CheckpointError

# safetensors dtype names <-> numpy dtypes (numpy has no bfloat16: ml_dtypes, which jax ships).
DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
DTYPE_NAMES = {dtype: name for name, dtype in DTYPES.items()}

# Row blocks are read in chunks of about this many bytes, so a column slice of a large matrix
# never needs the whole row block in memory at once.
_CHUNK_BYTES = 16 << 20


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lies in a safetensors file."""

    file: Path
    dtype: np.dtype
    shape: tuple[int, ...]
    start: int  # absolute byte offset in the file


def read_header(path: Path) -> dict[str, TensorInfo]:
    """The tensors of one safetensors file, by name (the JSON header only; no data is read)."""
    try:
        with open(path, "rb") as f:
            raw_len = f.read(8)
            if len(raw_len) != 8:
                raise CheckpointError(f"{path}: not a safetensors file (shorter than its header)")
            (header_len,) = struct.unpack("<Q", raw_len)
            if header_len > 100 << 20:
                raise CheckpointError(f"{path}: not a safetensors file (header length {header_len})")
            header = json.loads(f.read(header_len))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: not a safetensors file ({exc})") from None
    base = 8 + header_len
    tensors = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if entry.get("dtype") not in DTYPES:
            raise CheckpointError(f"{path}: tensor {name} has unsupported dtype {entry.get('dtype')!r}")
        begin, end = entry["data_offsets"]
        dtype = DTYPES[entry["dtype"]]
        shape = tuple(int(n) for n in entry["shape"])
        if end - begin != int(np.prod(shape, dtype=np.int64)) * dtype.itemsize:
            raise CheckpointError(f"{path}: tensor {name}: shape {shape} does not match its byte size")
        tensors[name] = TensorInfo(Path(path), dtype, shape, base + begin)
    return tensors


class SafetensorsReader:
    """Random access to the tensors of one or many safetensors files, one row block at a time."""

    def __init__(self, files: Iterable[Path]):
        self.tensors: dict[str, TensorInfo] = {}
        for path in files:
            for name, info in read_header(Path(path)).items():
                if name in self.tensors:
                    raise CheckpointError(f"tensor {name} appears in both {self.tensors[name].file} and {path}")
                self.tensors[name] = info
        self._fds: dict[Path, int] = {}

    def shape(self, name: str) -> tuple[int, ...]:
        return self.tensors[name].shape

    def read(self, name: str, rows: slice | None = None, cols: slice | None = None) -> np.ndarray:
        """``tensor[rows, cols]`` (a 1-D tensor ignores ``cols``), read with ``pread``."""
        info = self.tensors[name]
        if not info.shape:
            return self._pread(info, 0, info.dtype.itemsize).reshape(())
        shape = info.shape
        r0, r1, _ = (rows or slice(None)).indices(shape[0])
        row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * info.dtype.itemsize
        if len(shape) == 1 or cols is None:
            return self._pread(info, r0 * row_bytes, (r1 - r0) * row_bytes).reshape((r1 - r0, *shape[1:]))
        c0, c1, _ = cols.indices(shape[1])
        out = np.empty((r1 - r0, c1 - c0, *shape[2:]), info.dtype)
        step = max(1, _CHUNK_BYTES // max(row_bytes, 1))
        for start in range(r0, r1, step):
            stop = min(r1, start + step)
            block = self._pread(info, start * row_bytes, (stop - start) * row_bytes).reshape((stop - start, *shape[1:]))
            out[start - r0 : stop - r0] = block[:, c0:c1]
        return out

    def _pread(self, info: TensorInfo, offset: int, length: int) -> np.ndarray:
        fd = self._fds.get(info.file)
        if fd is None:
            fd = self._fds[info.file] = os.open(info.file, os.O_RDONLY)
        buffer = np.empty(length, np.uint8)  # no zero-fill: every byte is read into
        done = 0
        while done < length:
            n = os.preadv(fd, [buffer[done:]], info.start + offset + done)
            if n <= 0:
                raise CheckpointError(f"{info.file}: unexpected end of file while reading tensor data")
            done += n
        return buffer.view(info.dtype)

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def __enter__(self) -> "SafetensorsReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass(frozen=True)
class TensorToWrite:
    """A tensor to stream into a file: its dtype and shape up front, its data on demand."""

    name: str
    dtype: np.dtype
    shape: tuple[int, ...]
    produce: Callable[[], np.ndarray]

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize


def write_file(path: Path, tensors: list[TensorToWrite], metadata: dict[str, str] | None = None) -> None:
    """Write ``tensors`` as one safetensors file, producing and writing one tensor at a time.

    The header needs every dtype, shape and offset before the first byte of data, which is why
    tensors are described up front and their arrays produced only when written. The file is
    written under a temporary name and moved into place, so a failed save leaves no partial file.
    """
    header: dict[str, object] = {"__metadata__": dict(metadata or {"format": "pt"})}
    offset = 0
    for t in tensors:
        header[t.name] = {
            "dtype": DTYPE_NAMES[np.dtype(t.dtype)],
            "shape": list(t.shape),
            "data_offsets": [offset, offset + t.nbytes],
        }
        offset += t.nbytes
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # data starts 8-byte aligned, as the reference writer does
    tmp = Path(f"{path}.tmp")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(encoded)))
        f.write(encoded)
        for t in tensors:
            array = np.ascontiguousarray(t.produce(), dtype=t.dtype)
            if array.shape != t.shape:
                raise CheckpointError(f"tensor {t.name}: produced shape {array.shape}, declared {t.shape}")
            f.write(memoryview(array.reshape(-1).view(np.uint8)))
            del array
    os.replace(tmp, path)
