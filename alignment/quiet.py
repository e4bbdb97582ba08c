"""Silence two messages from libraries we depend on that alarm users for nothing.

- bitsandbytes, imported by peft whenever an adapter is loaded, logs "Failed to load CPU gemm_4bit_forward from
  kernels-community ... Please make sure you already `pip install kernels`" on CPUs with bfloat16 AVX-512. It
  concerns 4-bit weights on a CPU, which this project never loads (4-bit needs CUDA here), so nothing needs
  installing.
- peft calls transformers' deprecated ``is_gradient_checkpointing`` and transformers warns with a FutureWarning
  that the user cannot act on.

Everything else these libraries say still gets through. ``alignment/__init__.py`` calls ``quiet_library_noise()``
so the app and every command line get it.
"""

from __future__ import annotations

import logging
import warnings

_BITSANDBYTES_CPU_LOGGER = "bitsandbytes.backends.cpu.ops"


class _DropKernelsHint(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "kernels-community" not in record.getMessage()


def quiet_library_noise() -> None:
    """Install the two filters; calling it again adds nothing."""
    logger = logging.getLogger(_BITSANDBYTES_CPU_LOGGER)
    if not any(isinstance(f, _DropKernelsHint) for f in logger.filters):
        logger.addFilter(_DropKernelsHint())
    warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning)
