"""Host memory peak of ``load_hf`` against the checkpoint size, with transformers as the peer.

Builds a random-weight LLaMA checkpoint (default: TinyLlama-1.1B shapes, float32, ~4.4 GB, in
safetensors shards of at most 2 GB with an index) in a temporary directory, then loads it in a
fresh subprocess per loader and reads that process's peak resident set (``VmHWM`` from
/proc/self/status, i.e. the same as ``ru_maxrss``). The baseline column is the resident set after
the loader's imports, before loading, so ``peak - baseline`` is what loading itself added. The
temporary checkpoint is deleted afterwards.

    python benchmarks/bench_load_hf_memory.py [--layers 22] [--hidden 2048] [--skip-transformers]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

LOADERS = {
    "harness load_hf float32": (
        "from harness.model.convert import load_hf\nimport jax\njax.devices()\n",
        "model = load_hf(path, dtype='float32')\njax.block_until_ready(model.layers.wq[...])\n",
    ),
    "harness load_hf bfloat16": (
        "from harness.model.convert import load_hf\nimport jax\njax.devices()\n",
        "model = load_hf(path, dtype='bfloat16')\njax.block_until_ready(model.layers.wq[...])\n",
    ),
    # transformers maps the safetensors files and materialises parameters lazily: right after
    # from_pretrained most weights are still unread file pages. The second row reads every
    # parameter once (as a forward pass would), which makes the whole model resident.
    "transformers from_pretrained": (
        "import torch, transformers\n",
        "model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)\n",
    ),
    "transformers + read every weight": (
        "import torch, transformers\n",
        "model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)\n"
        "total = sum(float(p.float().sum()) for p in model.parameters())\n",
    ),
}

CHILD = """
import json, sys, time
def hwm():
    for line in open('/proc/self/status'):
        if line.startswith(('VmHWM', 'VmRSS')):
            yield line.split(':')[0], int(line.split()[1]) * 1024
path = sys.argv[1]
{imports}
baseline = dict(hwm())['VmRSS']
start = time.perf_counter()
{load}
seconds = time.perf_counter() - start
print(json.dumps({{'baseline': baseline, 'peak': dict(hwm())['VmHWM'], 'seconds': seconds}}))
"""


def build_checkpoint(directory: Path, args) -> int:
    """Random LLaMA weights as HF safetensors shards (streamed, one tensor at a time)."""
    from harness.model.convert_hf import INDEX_FILE, _shards, config_to_hf
    from harness.model.convert_safetensors import TensorToWrite, write_file
    from harness.model.convert_weights import weight_maps
    from harness.model.llama import LlamaConfig

    config = LlamaConfig(
        vocab_size=args.vocab, hidden_size=args.hidden, num_layers=args.layers, num_heads=args.heads,
        num_kv_heads=args.kv_heads, intermediate_size=args.mlp,
    )
    rng = np.random.default_rng(0)
    tensors = []
    for m in weight_maps(config):
        for name in m.hf_names(config):
            shape = m.hf_shape(config)
            tensors.append(TensorToWrite(name, np.dtype(np.float32), shape,
                                         lambda shape=shape: rng.standard_normal(shape, dtype=np.float32) * 0.02))
    shards = _shards(tensors, 2 * 10**9)
    weight_map = {}
    for i, shard in enumerate(shards, start=1):
        file = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        write_file(directory / file, shard)
        weight_map.update({t.name: file for t in shard})
    total = sum(t.nbytes for t in tensors)
    (directory / INDEX_FILE).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))
    (directory / "config.json").write_text(json.dumps(config_to_hf(config, "float32")))
    return total


def measure(name: str, path: Path) -> dict:
    imports, load = LOADERS[name]
    code = CHILD.format(imports=imports, load=load)
    done = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True,
                          env={**__import__("os").environ, "JAX_PLATFORMS": "cpu", "HF_HUB_OFFLINE": "1"})
    if done.returncode != 0:
        raise SystemExit(f"{name} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, default=22)
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--kv-heads", type=int, default=4)
    parser.add_argument("--mlp", type=int, default=5632)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--skip-transformers", action="store_true")
    parser.add_argument("--tmp", default=None, help="where to build the temporary checkpoint")
    args = parser.parse_args()

    directory = Path(tempfile.mkdtemp(prefix="bench_load_hf_", dir=args.tmp))
    try:
        start = time.perf_counter()
        size = build_checkpoint(directory, args)
        print(f"checkpoint: {size / 1e9:.2f} GB float32 ({size // 4 / 1e9:.2f} B params), "
              f"{len(list(directory.glob('*.safetensors')))} shards, built in {time.perf_counter() - start:.0f} s")
        names = [n for n in LOADERS if not (args.skip_transformers and n.startswith("transformers"))]
        rows = [(name, measure(name, directory)) for name in names]
    finally:
        shutil.rmtree(directory, ignore_errors=True)

    header = f"{'loader':32} {'target GB':>9} {'baseline GB':>11} {'peak GB':>8} {'added GB':>8} {'added/target':>12} {'time s':>7}"
    print(header)
    print("-" * len(header))
    for name, r in rows:
        target = size / 2 if "bfloat16" in name else size
        added = r["peak"] - r["baseline"]
        print(f"{name:32} {target / 1e9:9.2f} {r['baseline'] / 1e9:11.2f} {r['peak'] / 1e9:8.2f} "
              f"{added / 1e9:8.2f} {added / target:12.2f} {r['seconds']:7.1f}")
    peer = dict(rows).get("transformers + read every weight")
    if peer is not None:
        ours = dict(rows)["harness load_hf float32"]
        ratio = (ours["peak"] - ours["baseline"]) / (peer["peak"] - peer["baseline"])
        print(f"harness / transformers(all weights read) added-memory ratio, float32: {ratio:.2f}")


if __name__ == "__main__":
    main()
