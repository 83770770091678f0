"""Resumable training state as safetensors + JSON (no pickle: a checkpoint may come from someone else).

A training loop hands :class:`Checkpointer` a nested state — model / optimizer / scheduler ``state_dict()``s,
RNG states, the epoch, early-stopping state and best weights, the history — at each epoch boundary. Tensors go to
``state.safetensors``; everything else (numbers, strings, lists, dicts with int keys, tuples, numpy arrays) is
encoded in ``state.json`` with references to the tensors. Both files are written into a fresh folder that is
swapped in whole, so a SIGKILL at any moment leaves either the previous checkpoint or the new one, never a mix.

Resuming at an epoch boundary is exact when each epoch's randomness is drawn from state saved here (or seeded
from the epoch number, as the trainers do): the killed epoch is replayed from its start with the same draws.
"""

from __future__ import annotations

import contextlib
import json
import random
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from thinkrec.utils import distributed
from thinkrec.utils.io import atomic_dir

_TENSOR, _ARRAY, _TUPLE, _DICT = "__tensor__", "__ndarray__", "__tuple__", "__dict__"


def _encode(obj: Any, tensors: dict[str, torch.Tensor], path: str) -> Any:
    if isinstance(obj, torch.Tensor):
        key = path or "root"
        # clone: safetensors refuses tensors that share storage (tied weights) or are views
        tensors[key] = obj.detach().to("cpu", copy=True).contiguous()
        return {_TENSOR: key}
    if isinstance(obj, np.ndarray):
        key = path or "root"
        tensors[key] = torch.from_numpy(np.ascontiguousarray(obj).copy())
        return {_ARRAY: key, "dtype": str(obj.dtype)}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj):
            return {k: _encode(v, tensors, f"{path}.{k}" if path else k) for k, v in obj.items()}
        return {_DICT: [[k, _encode(v, tensors, f"{path}.{k}")] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {_TUPLE: [_encode(v, tensors, f"{path}.{i}") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, tensors, f"{path}.{i}") for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    raise TypeError(f"checkpoint: cannot store {type(obj).__name__} at {path!r} (tensors, arrays, JSON values only)")


def _decode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if _TENSOR in obj:
            return tensors[obj[_TENSOR]]
        if _ARRAY in obj:
            return tensors[obj[_ARRAY]].numpy().astype(obj["dtype"], copy=False)
        if _TUPLE in obj:
            return tuple(_decode(v, tensors) for v in obj[_TUPLE])
        if _DICT in obj:
            return {k: _decode(v, tensors) for k, v in obj[_DICT]}
        return {k: _decode(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    return obj


def save_state(directory: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` as ``directory/{state.safetensors, state.json}``, swapped in atomically."""
    tensors: dict[str, torch.Tensor] = {}
    skeleton = _encode(state, tensors, "")
    with atomic_dir(directory) as tmp:
        save_file(tensors, str(tmp / "state.safetensors"))
        (tmp / "state.json").write_text(json.dumps(skeleton))
    return Path(directory)


def load_state(directory: str | Path, device: str = "cpu") -> dict[str, Any]:
    """Read what :func:`save_state` wrote (tensors onto ``device``); nothing in it is executed."""
    directory = Path(directory)
    try:
        skeleton = json.loads((directory / "state.json").read_text())
        tensors = load_file(str(directory / "state.safetensors"), device=device)
        return _decode(skeleton, tensors)
    except (OSError, ValueError, KeyError, SafetensorError) as exc:  # truncated / foreign files: a clear error, not a half-loaded state
        raise ValueError(f"{directory}: unreadable checkpoint ({exc}); remove it to start the stage over") from None


# ------------------------------------------------------------------------------------------------------ RNG states
def rng_state() -> dict[str, Any]:
    """Every global RNG a trainer may draw from: torch (CPU, every CUDA device), numpy's legacy global, Python's."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"name": np_state[0], "keys": np_state[1], "pos": int(np_state[2]), "has_gauss": int(np_state[3]),
                  "gauss": float(np_state[4])},
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"].to("cpu", torch.uint8))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.to("cpu", torch.uint8) for s in state["cuda"]])


def generator_state(gen: torch.Generator | np.random.Generator) -> Any:
    return gen.get_state() if isinstance(gen, torch.Generator) else gen.bit_generator.state


def set_generator_state(gen: torch.Generator | np.random.Generator, state: Any) -> None:
    if isinstance(gen, torch.Generator):
        gen.set_state(state.to("cpu", torch.uint8))
    else:
        gen.bit_generator.state = state


# ------------------------------------------------------------------------------------------------------ checkpointer
class Checkpointer:
    """The checkpoint of one training loop in ``directory`` (``None``: checkpointing off, every call a no-op).

    ``key`` identifies what is trained (a hash of its config and inputs): a checkpoint left by another key is
    never resumed — it is ignored and replaced (``strict=False``) or refused with an error (``strict=True``, for a
    folder a user points at by hand). Under torch.distributed every rank loads, rank 0 alone writes.
    """

    def __init__(self, directory: str | Path | None, key: str, log: Callable[[str], None] = print, strict: bool = False):
        self.directory = Path(directory) if directory is not None else None
        self.key, self.log, self.strict = key, log, strict

    @property
    def enabled(self) -> bool:
        return self.directory is not None

    def load(self, device: str = "cpu") -> dict[str, Any] | None:
        """The saved state when one for this key exists, else ``None``."""
        if self.directory is None or not (self.directory / "state.json").exists():
            return None
        state = load_state(self.directory, device)
        if state.get("key") != self.key:
            if self.strict:
                raise ValueError(f"{self.directory}: checkpoint is from a different configuration; remove it or "
                                 "change the run")
            self.log(f"{self.directory}: checkpoint is from another configuration; starting over")
            return None
        return state

    def save(self, state: dict[str, Any]) -> None:
        """Write ``state`` (under torch.distributed: rank 0 writes, every rank waits for it)."""
        if self.directory is not None:
            if distributed.is_main():
                save_state(self.directory, {**state, "key": self.key})
            distributed.barrier()

    def clear(self) -> None:
        if self.directory is not None:
            if distributed.is_main():
                with contextlib.suppress(FileNotFoundError):
                    shutil.rmtree(self.directory)
            distributed.barrier()


def subdir(directory: str | Path | None, name: str) -> Path | None:
    """``directory / name``, or ``None`` when checkpointing is off."""
    return Path(directory) / name if directory is not None else None
