"""Score only completion tokens through the LM head when TRL trains on a CPU.

TRL 1.16's fused LM head (``trl.trainer.utils.add_fused_lm_head``) projects hidden states through the
vocabulary in tiles and returns per-token log-probs. On CUDA it first keeps only the positions whose label is not
-100 (the completion tokens); everywhere else it scores every position, prompt and padding included, because on
Neuron a changing number of positions would recompile the graph. A CPU compiles nothing, so that caution only
costs time there: with the 49,152-token vocabulary of the bundled model the head is about a third of a DPO step,
and most positions are prompt. The compact path is the same torch code TRL already runs on CPU when Triton is
absent (the kernel's own fallback), fed fewer rows, so the log-probs are the same numbers
(tests/test_completion_logprobs.py checks values and gradients against TRL's unpatched path).

``enable()`` is called by ``alignment.train.train`` before building the trainer; it is idempotent and returns
whether the hook was found (False on a TRL without it: training then runs at TRL's speed, unchanged).
"""

from __future__ import annotations

from typing import Any

_ORIGINAL_ATTRIBUTE = "_align_studio_original"


def enable() -> bool:
    """Make TRL's fused LM head compact (completion positions only) on CPU as it already is on CUDA."""
    try:
        from trl.trainer import utils as trl_utils
    except ImportError:
        return False
    current = getattr(trl_utils, "_use_triton", None)
    if current is None:
        return False
    if getattr(current, _ORIGINAL_ATTRIBUTE, None) is not None:
        return True

    def compact_on_cpu(device: Any) -> bool:
        return getattr(device, "type", None) == "cpu" or current(device)

    setattr(compact_on_cpu, _ORIGINAL_ATTRIBUTE, current)
    trl_utils._use_triton = compact_on_cpu
    return True


def disable() -> None:
    """Restore TRL's own choice (tests compare both paths)."""
    from trl.trainer import utils as trl_utils

    original = getattr(getattr(trl_utils, "_use_triton", None), _ORIGINAL_ATTRIBUTE, None)
    if original is not None:
        trl_utils._use_triton = original


def is_enabled() -> bool:
    from trl.trainer import utils as trl_utils

    return getattr(getattr(trl_utils, "_use_triton", None), _ORIGINAL_ATTRIBUTE, None) is not None
