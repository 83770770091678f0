"""Faults a training stage must not hide: non-finite numbers, and a kill at any step (for resume tests).

``check_finite`` stops a stage at the first NaN / inf in a loss, an embedding or a score tensor with the stage,
the step and the tensor's name, instead of training on (or serving) garbage.

``kill_point`` is the fault injector of the resume tests: with ``THINKREC_KILL_AT_STEP=N`` in the environment
the process SIGKILLs itself at the N-th training step it reaches (counted over every trainer in the process), as
an operator's ``kill -9`` would. Unset (always, outside tests), it costs one integer increment.
"""

from __future__ import annotations

import os
import signal

import torch

from thinkrec.errors import UserError


class NumericalError(UserError, RuntimeError):
    """A NaN / inf where training or scoring needs finite numbers; names the stage, step and tensor."""

    def __init__(self, stage: str, step: int | str, name: str, detail: str):
        super().__init__(f"{stage}: non-finite {name} at step {step} ({detail}); the stage stopped — "
                         "lower the learning rate, check the inputs for NaN / inf, or enable grad clipping")
        self.stage, self.step, self.name = stage, step, name


def check_finite(t: torch.Tensor, stage: str, step: int | str, name: str, allow_neg_inf: bool = False) -> None:
    """Raise :class:`NumericalError` when ``t`` holds a NaN or an inf (``allow_neg_inf``: −inf is allowed, as
    scores use it for items a scorer excludes)."""
    if not t.is_floating_point():
        return
    bad = torch.isnan(t) | (torch.isposinf(t) if allow_neg_inf else torch.isinf(t))
    if bool(bad.any()):
        nan, inf = int(torch.isnan(t).sum()), int(torch.isinf(t).sum())
        raise NumericalError(stage, step, name, f"{nan} NaN, {inf} inf of {t.numel()} values")


_steps = 0
_kill_at = int(os.environ.get("THINKREC_KILL_AT_STEP", "0") or 0)


def kill_point() -> None:
    """One training step reached; SIGKILL this process at the configured one (see the module docstring)."""
    global _steps
    _steps += 1
    if _kill_at and _steps >= _kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
