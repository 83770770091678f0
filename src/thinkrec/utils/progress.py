"""Progress of long library work (embedding, training epochs, evaluation batches, LLM phases), silent by default.

Library code calls :func:`report` with a task name and ``step`` of ``total``; nothing happens unless a caller
installed a callback with :func:`progress_callback` (the CLI's progress bars, the pipeline's ``progress=``)::

    with progress_callback(lambda task, step, total: print(task, step, total)):
        embed_items(dataset, config)

The callback lives in a :class:`contextvars.ContextVar`, so it is scoped to the ``with`` block (and the thread or
task that entered it) and library signatures need no extra argument. A callback that raises is the caller's
problem: :func:`report` does not swallow it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextvars import ContextVar

#: ``callback(task, step, total)``: ``step`` of ``total`` units of ``task`` are done (1-based; step 1 starts it).
ProgressFn = Callable[[str, int, int], None]

_CALLBACK: ContextVar[ProgressFn | None] = ContextVar("thinkrec_progress", default=None)


@contextlib.contextmanager
def progress_callback(fn: ProgressFn | None) -> Iterator[None]:
    """Route :func:`report` calls inside the block to ``fn`` (``None``: silence them, e.g. inside a nested run)."""
    token = _CALLBACK.set(fn)
    try:
        yield
    finally:
        _CALLBACK.reset(token)


def current() -> ProgressFn | None:
    """The installed callback, or None."""
    return _CALLBACK.get()


def report(task: str, step: int, total: int) -> None:
    """``step`` of ``total`` units of ``task`` are done; a no-op unless a callback is installed."""
    fn = _CALLBACK.get()
    if fn is not None:
        fn(task, int(step), int(total))
