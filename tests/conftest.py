"""Test setup: 8 simulated CPU devices, set before jax initialises."""

import os
import tempfile

import helpers

os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + ' ' +
                           helpers.xla_flags(8))
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
# Many tests train the same tiny configs, often in subprocesses: a persistent
# compilation cache (inherited by the subprocesses) compiles each step once.
# Cached executables are the compiled ones, so no result depends on it.
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', os.path.join(
    tempfile.gettempdir(), f'latentlm-tests-jax-cache-{os.getuid()}'))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0.5')

import jax  # pylint: disable=g-import-not-at-top

jax.config.update('jax_threefry_partitionable', True)
