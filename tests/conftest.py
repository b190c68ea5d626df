"""Test configuration: 8 CPU devices for sharding tests, set before jax is imported."""

import os
from pathlib import Path

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Keep `datasets`' Arrow cache and the harness's token cache out of the user's home.
import tempfile  # noqa: E402

_CACHE_ROOT = tempfile.mkdtemp(prefix="harness-tests-")
os.environ.setdefault("HF_DATASETS_CACHE", os.path.join(_CACHE_ROOT, "hf_datasets"))
os.environ.setdefault("HARNESS_CACHE", os.path.join(_CACHE_ROOT, "harness"))

import pytest  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
# The real public samples sit at ../shared beside the checkout (and in CI).
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path of ../shared/data; tests that need it are skipped only where it does not exist."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real public samples not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory):
    """(root, jax cache) of one uninterrupted 4-device run of experiments/train_tiny.yaml at
    ``root / "reference"``, shared by test_train_resume and test_multihost."""
    from test_train_resume import harness_env, run_train

    root = tmp_path_factory.mktemp("resume")
    cache = root / "cache"
    result = run_train(root / "reference", harness_env(cache))
    assert result.returncode == 0, result.stderr[-3000:]
    return root, cache
