"""The two library messages alignment silences are dropped; the libraries' other messages still get through."""

import logging
import warnings

import alignment  # noqa: F401  (importing the package installs the filters)
from alignment.quiet import quiet_library_noise


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_the_bitsandbytes_kernels_hint_is_dropped_and_its_other_warnings_kept():
    logger = logging.getLogger("bitsandbytes.backends.cpu.ops")
    collect = _Collect()
    logger.addHandler(collect)
    try:
        logger.warning("Failed to load CPU gemm_4bit_forward from kernels-community: %s. Please make sure you "
                       "already `pip install kernels`", "No module named 'kernels'")
        logger.warning("something else went wrong")
    finally:
        logger.removeHandler(collect)
    assert collect.messages == ["something else went wrong"]


def test_installing_twice_adds_one_filter():
    quiet_library_noise()
    quiet_library_noise()
    logger = logging.getLogger("bitsandbytes.backends.cpu.ops")
    assert sum(type(f).__name__ == "_DropKernelsHint" for f in logger.filters) == 1


def test_only_the_is_gradient_checkpointing_future_warning_is_ignored():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_library_noise()
        warnings.warn("`is_gradient_checkpointing` is deprecated and will be removed in v6.", FutureWarning, stacklevel=1)
        warnings.warn("`other_thing` is deprecated", FutureWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["`other_thing` is deprecated"]
