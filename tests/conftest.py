"""Eight simulated CPU devices, set before jax is imported, so that sharding in tests is real; and
one persistent XLA compilation cache for the whole test session.

The cache (JAX's ``jax_compilation_cache_dir``, in a fresh temporary folder, inherited by the
``train.py`` processes the end-to-end tests start) lets a program compiled once be loaded instead
of compiled again: the same model's step in a resumed, killed or two-process run, and the same
computation rebuilt by another test. A loaded executable is the one XLA compiled, so results are
the same bits; only the compile time goes. ``MLPBNN_TEST_COMPILATION_CACHE=0`` turns it off.
"""

import atexit
import os
import shutil
import tempfile

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

if os.environ.get("MLPBNN_TEST_COMPILATION_CACHE", "1") != "0" and "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _cache = tempfile.mkdtemp(prefix="mlpbnn-test-xla-cache-")
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"  # the many small programs too
    os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
