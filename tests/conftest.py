import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import pytest  # noqa: E402
from hypothesis import settings  # noqa: E402

# Scripts that tests run in processes of their own, each setting up its
# process (devices, TF_CONFIG, the backend) when it starts: never imported
# by the collection (--doctest-modules would import them).
collect_ignore = [
    "distributed_fit.py",
    "multi_worker_fit.py",
    "data_parallel_fit.py",
    "faulty_pretrain.py",
    "peak_memory.py",
]

settings.register_profile("default", deadline=None, max_examples=500)
settings.register_profile("long", deadline=None, max_examples=5000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


def pytest_collection_modifyitems(config, items):
    """Under KERAS_BACKEND=jax or torch, TensorFlow-only tests are skipped
    (`make test-backends` runs the rest)."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        return
    skip = pytest.mark.skip(reason=f"TensorFlow only; backend is {backend}")
    for item in items:
        if "tensorflow_only" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _vocabulary_cache(tmp_path, monkeypatch):
    """Learned vocabularies go to a temporary folder, not the home one."""
    monkeypatch.setenv("KERAS_DYNMASK_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def mixed_policy(request):
    """Sets a global dtype policy for one test and restores float32."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(request.param)
    yield request.param
    keras.config.set_dtype_policy(previous)
