"""Semantic IDs: a bijective item ↔ SID map over quantizer codes, and the prefix trie for constrained decoding.

A quantizer gives raw codes ``[n_items, L]``; several items may share a tuple. :class:`SIDMap` resolves
collisions in one of two ways:

* ``"dedup"`` (TIGER, GRID): append a final digit 0, 1, 2, … among the items sharing a tuple, so SIDs have
  length ``L + 1`` and the extra level has ``max_items_per_tuple`` codes.
* ``"reassign"`` (LC-Rec / LETTER style): keep length ``L``; in each colliding group the item closest to its
  code keeps it and the others move to the nearest free code at the last level under the same prefix
  (nearest by the optional per-item last-level distances ``[n_items, K]``, else the lowest free code); if that
  prefix is full, to the nearest free SID (in key order) sharing the longest possible prefix.

Lookups are vectorised: a SID is a mixed-radix integer key (``key = (…(c1·K2 + c2)·K3 + c3…)``); the map
keeps the sorted keys and answers ``sid_to_item`` with ``searchsorted``. :class:`SIDTrie` keeps, per depth,
the sorted keys of the valid prefixes and a ``[n_prefixes, K_t]`` bool tensor of allowed children, so the
allowed-next masks of a whole batch of beams are one ``searchsorted`` and one gather.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from thinkrec.utils.io import atomic_dir, read_json, write_json

STRATEGIES = ("dedup", "reassign")
SID_BEGIN, SID_END = "<|sid_begin|>", "<|sid_end|>"
_LEVEL_LETTERS = "abcdefghijklmnopqrstuvwxyz"
_SID_TOKEN = re.compile(r"<s_([a-z])_(\d+)>")
# Keys are int64; stay well clear of overflow in the Horner products.
_MAX_KEY_SPACE = 2**62


def mixed_radix_keys(codes: np.ndarray, radix: Sequence[int]) -> np.ndarray:
    """Integer key of each row of ``codes [n, t]`` in the mixed radix ``radix[:t]`` (order-preserving)."""
    codes = np.asarray(codes, dtype=np.int64)
    key = np.zeros(codes.shape[0], dtype=np.int64)
    for i in range(codes.shape[1]):
        key = key * int(radix[i]) + codes[:, i]
    return key


def _check_key_space(radix: Sequence[int]) -> int:
    space = 1
    for r in radix:
        space *= int(r)
    if space >= _MAX_KEY_SPACE:
        raise ValueError(f"SID space {list(radix)} is too large for int64 keys")
    return space


def last_level_distances(residuals: np.ndarray, codebook: np.ndarray) -> np.ndarray:
    """Squared distances ``[n, K]`` from each item's last-level residual to every last-level codeword
    (the ``last_level_dist`` input of ``SIDMap(strategy="reassign")``)."""
    r = np.asarray(residuals, dtype=np.float32)
    c = np.asarray(codebook, dtype=np.float32)
    d = (r * r).sum(1, keepdims=True) - 2.0 * r @ c.T + (c * c).sum(1)[None, :]
    return np.maximum(d, 0.0)


def _to_numpy(x: Any) -> tuple[np.ndarray, torch.device | None]:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy().astype(np.int64, copy=False), x.device
    return np.asarray(x, dtype=np.int64), None


class SIDMap:
    """Bijective item ↔ SID map built from raw quantizer codes.

    Args:
        raw_codes: ``[n_items, L]`` int codes, row i = dense item id i.
        codebook_size: codes per level (int or one per level); None infers ``max + 1`` per level. Give the
            real codebook size so the trie's masks match the decoder's vocabulary.
        strategy: ``"dedup"`` or ``"reassign"`` (see the module docstring).
        last_level_dist: optional ``[n_items, K_L]`` distances of each item to every last-level code; used by
            ``"reassign"`` to pick who keeps a code and where the others move.
    """

    def __init__(
        self,
        raw_codes: np.ndarray,
        codebook_size: int | Sequence[int] | None = None,
        strategy: str = "dedup",
        last_level_dist: np.ndarray | None = None,
    ) -> None:
        raw = np.asarray(raw_codes)
        if raw.ndim != 2 or raw.shape[0] == 0 or raw.shape[1] == 0:
            raise ValueError(f"raw_codes must be a non-empty [n_items, L] array, got shape {list(raw.shape)}")
        if not np.issubdtype(raw.dtype, np.integer):
            raise ValueError(f"raw_codes must be integers, got {raw.dtype}")
        raw = raw.astype(np.int64)
        n, n_levels = raw.shape
        if codebook_size is None:
            sizes = [int(v) + 1 for v in raw.max(0)]
        elif isinstance(codebook_size, int | np.integer):
            sizes = [int(codebook_size)] * n_levels
        else:
            sizes = [int(v) for v in codebook_size]
            if len(sizes) != n_levels:
                raise ValueError(f"codebook_size has {len(sizes)} entries for {n_levels} levels")
        if raw.min() < 0 or (raw >= np.asarray(sizes)[None, :]).any():
            raise ValueError(f"raw codes out of range for codebook sizes {sizes}")
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown collision strategy {strategy!r}; use one of {STRATEGIES}")
        _check_key_space(sizes)

        raw_keys = mixed_radix_keys(raw, sizes)
        order = np.argsort(raw_keys, kind="stable")
        sorted_keys = raw_keys[order]
        starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
        counts = np.diff(np.r_[starts, n])
        n_unique = int(starts.shape[0])
        max_per_tuple = int(counts.max())

        reassigned = np.zeros(n, dtype=bool)
        if strategy == "dedup":
            # Rank of each item inside its group (groups ordered by item id thanks to the stable sort).
            rank_sorted = np.arange(n) - np.repeat(starts, counts)
            digit = np.empty(n, dtype=np.int64)
            digit[order] = rank_sorted
            codes = np.concatenate([raw, digit[:, None]], axis=1)
            radix = [*sizes, max_per_tuple]
        else:
            codes, reassigned = _reassign(raw, raw_keys, sizes, order, starts, counts, last_level_dist)
            radix = list(sizes)

        self._init(raw, codes, radix, sizes, strategy, reassigned, n_unique, max_per_tuple)

    # ------------------------------------------------------------------ construction helpers
    def _init(
        self,
        raw: np.ndarray,
        codes: np.ndarray,
        radix: list[int],
        codebook_size: list[int],
        strategy: str,
        reassigned: np.ndarray,
        n_unique: int,
        max_per_tuple: int,
    ) -> None:
        self.raw_codes = raw
        self.codes = np.ascontiguousarray(codes, dtype=np.int64)
        self.radix = [int(r) for r in radix]
        self.codebook_size = [int(k) for k in codebook_size]
        self.strategy = strategy
        self.reassigned = reassigned
        self.n_unique_tuples = n_unique
        self.max_items_per_tuple = max_per_tuple
        _check_key_space(self.radix)
        self.keys = mixed_radix_keys(self.codes, self.radix)
        self._order = np.argsort(self.keys, kind="stable")
        self._sorted_keys = self.keys[self._order]
        if (self._sorted_keys[1:] == self._sorted_keys[:-1]).any():
            raise AssertionError("SIDMap is not a bijection: two items share a SID")  # a bug, never data

    # ------------------------------------------------------------------ properties
    @property
    def n_items(self) -> int:
        return int(self.codes.shape[0])

    @property
    def sid_length(self) -> int:
        """Levels in a final SID: ``L + 1`` for dedup, ``L`` for reassign."""
        return int(self.codes.shape[1])

    @property
    def n_raw_levels(self) -> int:
        return int(self.raw_codes.shape[1])

    @property
    def unique_before_dedup(self) -> float:
        """Distinct raw tuples / items (1.0 = no collisions; GR2's "SID uniqueness")."""
        return self.n_unique_tuples / self.n_items

    @property
    def n_reassigned(self) -> int:
        return int(self.reassigned.sum())

    # ------------------------------------------------------------------ lookups
    def item_to_sid(self, items: Any) -> Any:
        """SIDs ``[n, sid_length]`` of dense item ids (numpy in → numpy out, tensor in → tensor out)."""
        idx, device = _to_numpy(items)
        if idx.size and (idx.min() < 0 or idx.max() >= self.n_items):
            raise IndexError(f"item ids must be in [0, {self.n_items})")
        out = self.codes[idx]
        return torch.from_numpy(out).to(device) if device is not None else out

    def sid_to_item(self, codes: Any) -> Any:
        """Items of SIDs ``[n, sid_length]``; -1 where the SID is not an item's (or a code is out of range)."""
        arr, device = _to_numpy(codes)
        squeeze = arr.ndim == 1
        arr = arr.reshape(1, -1) if squeeze else arr
        if arr.ndim != 2 or arr.shape[1] != self.sid_length:
            raise ValueError(f"expected SIDs of shape [n, {self.sid_length}], got {list(arr.shape)}")
        ok = ((arr >= 0) & (arr < np.asarray(self.radix)[None, :])).all(1)
        key = np.where(ok, mixed_radix_keys(np.where(arr < 0, 0, arr), self.radix), -1)
        pos = np.minimum(np.searchsorted(self._sorted_keys, key), self.n_items - 1)
        hit = ok & (self._sorted_keys[pos] == key)
        out = np.where(hit, self._order[pos], -1).astype(np.int64)
        out = out[0] if squeeze else out
        if device is not None:
            return torch.as_tensor(out).to(device)
        return out

    def trie(self) -> SIDTrie:
        return SIDTrie.from_sidmap(self)

    # ------------------------------------------------------------------ GR2 token strings
    def level_token(self, level: int, code: int) -> str:
        return f"<s_{_LEVEL_LETTERS[level]}_{code}>"

    def vocab_tokens(self) -> list[str]:
        """Every level-code token (``<s_a_0>`` … ), for adding SID tokens to an LLM tokenizer."""
        return [self.level_token(lv, c) for lv, k in enumerate(self.radix) for c in range(k)]

    def sid_strings(self, items: Any, wrap: bool = True) -> list[str]:
        """``<|sid_begin|><s_a_97><s_b_168>…<|sid_end|>`` for each item."""
        codes = np.asarray(self.item_to_sid(_to_numpy(items)[0]))
        body = ["".join(self.level_token(lv, int(c)) for lv, c in enumerate(row)) for row in codes]
        return [f"{SID_BEGIN}{b}{SID_END}" for b in body] if wrap else body

    def parse_sid_strings(self, texts: Sequence[str]) -> np.ndarray:
        """Items named by SID strings (the first full SID in each text); -1 when none parses to an item."""
        rows = np.full((len(texts), self.sid_length), -1, dtype=np.int64)
        for i, text in enumerate(texts):
            toks = _SID_TOKEN.findall(text)
            # Take tokens in level order a, b, c, …; a text that skips or repeats a level stays invalid.
            for start in range(max(0, len(toks) - self.sid_length + 1)):
                window = toks[start : start + self.sid_length]
                if all(letter == _LEVEL_LETTERS[lv] for lv, (letter, _) in enumerate(window)):
                    rows[i] = [int(c) for _, c in window]
                    break
        return self.sid_to_item(rows)

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path) -> Path:
        """Write ``sidmap.safetensors`` (raw codes, SIDs, reassigned flags) + ``sidmap.json`` into a folder."""
        from safetensors.numpy import save_file

        path = Path(path)
        with atomic_dir(path) as tmp:
            save_file(
                {"raw_codes": self.raw_codes, "codes": self.codes, "reassigned": self.reassigned.astype(np.uint8)},
                str(tmp / "sidmap.safetensors"),
            )
            write_json(tmp / "sidmap.json", self.summary())
        return path

    @classmethod
    def load(cls, path: str | Path) -> SIDMap:
        """Inverse of :meth:`save` (the SIDs are read back, not recomputed)."""
        from safetensors.numpy import load_file

        path = Path(path)
        meta = read_json(path / "sidmap.json")
        arrays = load_file(str(path / "sidmap.safetensors"))
        obj = cls.__new__(cls)
        obj._init(
            arrays["raw_codes"].astype(np.int64),
            arrays["codes"].astype(np.int64),
            meta["radix"],
            meta["codebook_size"],
            meta["strategy"],
            arrays["reassigned"].astype(bool),
            int(meta["n_unique_tuples"]),
            int(meta["max_items_per_tuple"]),
        )
        return obj

    def summary(self) -> dict[str, Any]:
        return {
            "strategy": self.strategy,
            "n_items": self.n_items,
            "sid_length": self.sid_length,
            "radix": self.radix,
            "codebook_size": self.codebook_size,
            "n_unique_tuples": self.n_unique_tuples,
            "unique_before_dedup": self.unique_before_dedup,
            "max_items_per_tuple": self.max_items_per_tuple,
            "n_reassigned": self.n_reassigned,
        }

    def __repr__(self) -> str:
        return (
            f"SIDMap(n_items={self.n_items}, strategy={self.strategy!r}, radix={self.radix}, "
            f"unique_before_dedup={self.unique_before_dedup:.4f}, max_items_per_tuple={self.max_items_per_tuple})"
        )


def _reassign(
    raw: np.ndarray,
    raw_keys: np.ndarray,
    sizes: list[int],
    order: np.ndarray,
    starts: np.ndarray,
    counts: np.ndarray,
    dist: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Move all but one item of each colliding group to the nearest free SID (only colliders loop in Python)."""
    n, n_levels = raw.shape
    space = _check_key_space(sizes)
    if n > space:
        raise ValueError(f"{n} items do not fit into {space} SIDs of sizes {sizes}; use strategy='dedup'")
    k_last = sizes[-1]
    if dist is not None:
        dist = np.asarray(dist, dtype=np.float64)
        if dist.shape != (n, k_last):
            raise ValueError(f"last_level_dist must have shape [{n}, {k_last}], got {list(dist.shape)}")
    keys = raw_keys.copy()
    reassigned = np.zeros(n, dtype=bool)
    multi = np.flatnonzero(counts > 1)
    if multi.size == 0:
        return raw.copy(), reassigned

    movers: list[int] = []
    for g in multi:
        members = order[starts[g] : starts[g] + counts[g]]
        if dist is not None:
            # The item closest to the shared code keeps it; the others move, closest first.
            members = members[np.argsort(dist[members, raw[members, -1]], kind="stable")]
        movers.extend(int(i) for i in members[1:])
    occupied = set(np.delete(keys, movers).tolist())

    # Block sizes: items sharing the first p codes occupy keys [b·S_p, (b+1)·S_p) with S_p = Π sizes[p:].
    block = [int(np.prod(sizes[p:], dtype=np.int64)) for p in range(n_levels + 1)]
    for i in movers:
        own = int(keys[i])
        base = (own // k_last) * k_last
        free = np.array([c for c in range(k_last) if base + c not in occupied], dtype=np.int64)
        if free.size:
            c = free[np.argmin(dist[i, free])] if dist is not None else free[0]
            new = base + int(c)
        else:
            new = -1
            for p in range(n_levels - 2, -1, -1):
                new = _nearest_free(own, (own // block[p]) * block[p], block[p], occupied)
                if new >= 0:
                    break
            if new < 0:  # cannot happen when n <= space; kept as a guard
                raise AssertionError("no free SID left")
        occupied.add(new)
        keys[i] = new
        reassigned[i] = True

    codes = np.empty_like(raw)
    rest = keys.copy()
    for lv in range(n_levels - 1, -1, -1):
        codes[:, lv] = rest % sizes[lv]
        rest //= sizes[lv]
    return codes, reassigned


def _nearest_free(key: int, lo: int, size: int, occupied: set[int]) -> int:
    """Nearest key to ``key`` in ``[lo, lo + size)`` not in ``occupied`` (ties → the smaller key); -1 if none."""
    hi = lo + size
    for d in range(1, size):
        for cand in (key - d, key + d):
            if lo <= cand < hi and cand not in occupied:
                return cand
        if key - d < lo and key + d >= hi:
            break
    return -1


class SIDTrie:
    """Prefix trie over valid SIDs, answering allowed-next masks for a batch of beams at once.

    Per depth t it holds the sorted mixed-radix keys of the valid length-t prefixes and a bool tensor
    ``[n_prefixes_t, K_t]`` of their allowed children. Tensors live on one device (``to``); inputs on
    another device are moved.
    """

    def __init__(self, codes: np.ndarray, radix: Sequence[int], device: str | torch.device = "cpu") -> None:
        codes = np.asarray(codes, dtype=np.int64)
        if codes.ndim != 2 or codes.shape[1] != len(radix):
            raise ValueError(f"codes must be [n, {len(radix)}], got {list(codes.shape)}")
        self.radix = [int(r) for r in radix]
        _check_key_space(self.radix)
        self.n_sids = int(codes.shape[0])
        prefix_keys: list[np.ndarray] = []
        children: list[np.ndarray] = []
        for t in range(len(self.radix)):
            pk = mixed_radix_keys(codes[:, :t], self.radix)
            uniq, inv = np.unique(pk, return_inverse=True)
            child = np.zeros((uniq.shape[0], self.radix[t]), dtype=bool)
            child[inv.reshape(-1), codes[:, t]] = True
            prefix_keys.append(uniq)
            children.append(child)
        full = np.unique(mixed_radix_keys(codes, self.radix))
        self._device = torch.device(device)
        self._prefix_keys = [torch.from_numpy(k).to(self._device) for k in prefix_keys]
        self._children = [torch.from_numpy(c).to(self._device) for c in children]
        self._full_keys = torch.from_numpy(full).to(self._device)
        self._radix_t = torch.tensor(self.radix, dtype=torch.int64, device=self._device)

    @classmethod
    def from_sidmap(cls, sidmap: SIDMap, device: str | torch.device = "cpu") -> SIDTrie:
        return cls(sidmap.codes, sidmap.radix, device)

    @property
    def depth(self) -> int:
        return len(self.radix)

    @property
    def device(self) -> torch.device:
        return self._device

    def to(self, device: str | torch.device) -> SIDTrie:
        """Move the trie's tensors (in place; returns self)."""
        device = torch.device(device)
        self._prefix_keys = [k.to(device) for k in self._prefix_keys]
        self._children = [c.to(device) for c in self._children]
        self._full_keys = self._full_keys.to(device)
        self._radix_t = self._radix_t.to(device)
        self._device = device
        return self

    def n_prefixes(self, t: int) -> int:
        return int(self._prefix_keys[t].shape[0])

    def _keys(self, codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mixed-radix keys of ``codes [B, t]`` and whether every code was in range."""
        t = codes.shape[1]
        ok = ((codes >= 0) & (codes < self._radix_t[:t])).all(1)
        key = torch.zeros(codes.shape[0], dtype=torch.int64, device=codes.device)
        for i in range(t):
            key = key * self.radix[i] + codes[:, i]
        return torch.where(ok, key, torch.full_like(key, -1)), ok

    def _as_tensor(self, codes: Any) -> torch.Tensor:
        x = codes if isinstance(codes, torch.Tensor) else torch.as_tensor(np.asarray(codes))
        x = x.to(device=self._device, dtype=torch.int64)
        return x.reshape(1, -1) if x.ndim == 1 else x

    def allowed_next(self, prefix_codes: Any) -> torch.Tensor:
        """Bool mask ``[B, K_t]`` of the codes that may follow each prefix in ``prefix_codes [B, t]``.

        A prefix that no item's SID starts with gets an all-False row.
        """
        prefix = self._as_tensor(prefix_codes)
        t = prefix.shape[1]
        if t >= self.depth:
            raise ValueError(f"prefix length {t} leaves no next level (SID length {self.depth})")
        keys = self._prefix_keys[t]
        key, _ = self._keys(prefix)
        pos = torch.searchsorted(keys, key).clamp_(max=keys.shape[0] - 1)
        found = keys[pos] == key
        return self._children[t][pos] & found[:, None]

    def mask_logits(self, logits: torch.Tensor, prefix_codes: Any, fill: float = float("-inf")) -> torch.Tensor:
        """``logits [B, K_t]`` with disallowed codes set to ``fill`` (out of place)."""
        mask = self.allowed_next(prefix_codes).to(logits.device)
        return logits.masked_fill(~mask, fill)

    def is_valid(self, codes: Any) -> torch.Tensor:
        """Bool ``[B]``: whether each full SID ``codes [B, depth]`` belongs to an item."""
        x = self._as_tensor(codes)
        if x.shape[1] != self.depth:
            raise ValueError(f"expected SIDs of length {self.depth}, got {x.shape[1]}")
        key, ok = self._keys(x)
        pos = torch.searchsorted(self._full_keys, key).clamp_(max=self._full_keys.shape[0] - 1)
        return ok & (self._full_keys[pos] == key)

    def is_valid_prefix(self, codes: Any) -> torch.Tensor:
        """Bool ``[B]``: whether each ``codes [B, t]`` (t ≤ depth) is a prefix of some valid SID."""
        x = self._as_tensor(codes)
        t = x.shape[1]
        if t == self.depth:
            return self.is_valid(x)
        keys = self._prefix_keys[t]
        key, ok = self._keys(x)
        pos = torch.searchsorted(keys, key).clamp_(max=keys.shape[0] - 1)
        return ok & (keys[pos] == key)
