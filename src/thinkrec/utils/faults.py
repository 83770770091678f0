"""Faults a training stage must not hide: non-finite numbers, and a kill at any step (for resume tests).

``check_finite`` stops a stage at the first NaN / inf in a loss, an embedding or a score tensor with the stage,
the step and the tensor's name, instead of training on (or serving) garbage.

``training_step`` is the hook point every trainer's inner loop reaches once per step; tests install callbacks in
:data:`STEP_HOOKS` (the resume tests: SIGKILL at a chosen step). With none installed it costs an empty loop.
"""

from __future__ import annotations

from collections.abc import Callable

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


#: callbacks run at every training step, in order; the runtime installs none. The resume tests install one that
#: SIGKILLs the process at a chosen step, as an operator's ``kill -9`` would (``tests/resume/driver.py``).
STEP_HOOKS: list[Callable[[], None]] = []


def training_step() -> None:
    """One training step reached (every trainer's inner loop calls this): the installed hooks run."""
    for hook in STEP_HOOKS:
        hook()
