"""The embedded default dataset: a synthetic shop with planted, *known* structure, deterministic from a seed.

What is planted (and what later stages can learn from it)
---------------------------------------------------------
* A 3-level category tree (``top > mid > leaf``) with named nodes; item titles and descriptions are built from
  the leaf name, a mid-level attribute word, brand, adjective, size and shade/scent, so text embeddings carry the
  category signal Semantic IDs need. Brands have a home category; prices depend on the category.
* Zipf(-Mandelbrot) popularity over items.
* Users with a mixture of interest leaves that drifts along the sequence (a slot is swapped with
  probability ``drift_rate`` per step).
* Sequential co-purchase: every item has ``n_complements`` planted complement items (in related leaves, chosen
  uniformly so popularity cannot explain them); with probability ``copurchase_rate`` the next purchase is one of
  the previous item's complements. A sequence model learns this; a popularity ranker cannot.
* Impressions: lists of ``list_len`` items shown by a noisy logging policy, each with the user's history before it
  and clicks drawn from the known :class:`ClickModel`.

The click model (exact, so a re-ranker's expected clicks can be computed for any list)
---------------------------------------------------------------------------------------
For user ``u`` with history ``h`` (item ids, oldest first) and a displayed list ``items[0..K-1]``::

    state      = (1 - w) * pref[u] + w * leaf_histogram(last history_window items of h)   (w = history_weight,
                                                                                             0 if h is empty)
    logit_i    = attract_bias + pref_weight * log(n_leaves * state[leaf_i] + 0.1)
                 + pop_weight * zscore(log popularity_i) + complement_bonus * [i is a complement of h[-1]]
    attract_i  = sigmoid(logit_i)
    exam_k     = (1 + k) ** -position_decay
    discount_k = leaf_redundancy ** (#items above k in the same leaf)
                 * mid_redundancy ** (#items above k in the same mid but another leaf)
    P(click at k) = exam_k * attract_{items[k]} * discount_k        (clicks independent given the list)

so ``expected_clicks = sum_k P(click at k)``. ``pref[u]`` is the user's long-term taste (the smoothed interest
mixture the sequence simulation starts from); it is latent, kept out of the tables, and rebuilt exactly from the
config stored in ``dataset.meta`` (``ClickModel.from_dataset(ds)`` / ``ClickModel.from_meta(ds.meta)``).

Expected clicks of a re-ranked impression::

    model = ClickModel.from_dataset(ds)
    row = ds.impressions.row(i, named=True)
    model.expected_clicks(row["user"], np.asarray(row["history"]), np.asarray(row["items"])[perm])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import polars as pl

from thinkrec.data.dataset import Dataset

GENERATOR_VERSION = 1
_STATE_SMOOTH = 0.1  # keeps log(affinity) finite for leaves the user never touches
_SECONDS_PER_DAY = 86_400


# ---------------------------------------------------------------------------------------------- config
@dataclass
class SyntheticConfig:
    """Every knob of the generator; the defaults give a funnel that trains in minutes on 2 CPU cores."""

    seed: int = 0
    # sizes
    n_users: int = 2500
    n_items: int = 1200
    n_top: int = 4  # top-level categories
    n_mid: int = 4  # mid-level categories per top
    n_leaf: int = 4  # leaf categories per mid
    n_brands: int = 40
    # popularity: weight of the item at popularity rank r (1-based) is 1 / (r + zipf_offset) ** zipf_exponent
    zipf_exponent: float = 1.2
    zipf_offset: float = 10.0
    # sequences
    mean_seq_len: float = 12.0
    min_seq_len: int = 5
    max_seq_len: int = 50
    n_interests: int = 3  # interest slots (leaves) per user
    drift_rate: float = 0.08  # per step, probability of swapping one interest slot for a new leaf
    sibling_rate: float = 0.15  # an interest draw lands on a random sibling leaf (same mid)
    explore_rate: float = 0.10  # a purchase drawn from global popularity
    n_complements: int = 3
    copurchase_rate: float = 0.35  # the next purchase is a complement of the previous one
    start_ts: int = 1_600_000_000
    # impressions (logged lists)
    n_impressions: int = 3000
    list_len: int = 20
    logging_noise: float = 1.0  # Gumbel noise scale on the logging policy's ordering score
    # click model (see the module docstring)
    position_decay: float = 0.7
    attract_bias: float = -1.5
    pref_weight: float = 0.6
    pop_weight: float = 0.3
    complement_bonus: float = 1.5
    history_weight: float = 0.5
    history_window: int = 5
    leaf_redundancy: float = 0.5
    mid_redundancy: float = 0.85

    def __post_init__(self) -> None:
        # Values may arrive as strings from the CLI (``--opt n_users=500``): coerce to the field's type.
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, str):
                setattr(self, f.name, type(f.default)(float(v)) if isinstance(f.default, int) else float(v))
        n_leaves = self.n_top * self.n_mid * self.n_leaf
        checks = {
            "n_users >= 1": self.n_users >= 1,
            "n_top, n_mid, n_leaf >= 1": min(self.n_top, self.n_mid, self.n_leaf) >= 1,
            "n_items >= number of leaf categories": self.n_items >= n_leaves,
            "n_items >= max_seq_len + list_len": self.n_items >= self.max_seq_len + self.list_len,
            "n_brands >= 1": self.n_brands >= 1,
            "1 <= min_seq_len <= max_seq_len": 1 <= self.min_seq_len <= self.max_seq_len,
            "mean_seq_len >= min_seq_len": self.mean_seq_len >= self.min_seq_len,
            "n_interests >= 1": self.n_interests >= 1,
            "1 <= n_complements < n_items": 1 <= self.n_complements < self.n_items,
            "copurchase_rate + explore_rate <= 1": self.copurchase_rate + self.explore_rate <= 1.0,
            "rates in [0, 1]": all(
                0.0 <= r <= 1.0
                for r in (self.drift_rate, self.sibling_rate, self.explore_rate, self.copurchase_rate,
                          self.history_weight, self.leaf_redundancy, self.mid_redundancy)
            ),
            "n_impressions >= 0": self.n_impressions >= 0,
            "list_len >= 1": self.list_len >= 1,
            "history_window >= 1": self.history_window >= 1,
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"invalid SyntheticConfig: need {', '.join(bad)}")

    @property
    def n_leaves(self) -> int:
        return self.n_top * self.n_mid * self.n_leaf


@dataclass(frozen=True)
class ClickParams:
    """The click model's parameters: the :class:`SyntheticConfig` fields of the same names (their defaults and
    meaning are set there, once; build one with :meth:`from_config`)."""

    position_decay: float
    attract_bias: float
    pref_weight: float
    pop_weight: float
    complement_bonus: float
    history_weight: float
    history_window: int
    leaf_redundancy: float
    mid_redundancy: float

    @classmethod
    def from_config(cls, config: SyntheticConfig) -> ClickParams:
        return cls(**{f.name: getattr(config, f.name) for f in fields(cls)})


# ---------------------------------------------------------------------------------------------- vocabulary
# (top, [(mid, [leaves], [mid attribute words])]); extra nodes beyond these get generated pseudo-word names.
_TREE: list[tuple[str, list[tuple[str, list[str], list[str]]]]] = [
    ("Skin Care", [
        ("Moisturizers", ["Night Cream", "Day Cream", "Face Oil", "Eye Cream"],
         ["Hydrating", "Nourishing", "Replenishing", "Rich"]),
        ("Cleansers", ["Foaming Cleanser", "Micellar Water", "Cleansing Balm", "Exfoliating Scrub"],
         ["Gentle", "Purifying", "Soothing", "Clarifying"]),
        ("Sun Care", ["Sunscreen Lotion", "Sunscreen Stick", "After Sun Gel", "Self Tanning Mousse"],
         ["SPF 50", "Water Resistant", "Mineral", "Broad Spectrum"]),
        ("Treatments", ["Vitamin C Serum", "Retinol Serum", "Acne Spot Gel", "Sheet Mask"],
         ["Brightening", "Anti Aging", "Firming", "Renewing"]),
    ]),
    ("Hair Care", [
        ("Shampoos", ["Volumizing Shampoo", "Dry Shampoo", "Color Safe Shampoo", "Anti Dandruff Shampoo"],
         ["Sulfate Free", "Strengthening", "Thickening", "Scalp Care"]),
        ("Conditioners", ["Leave In Conditioner", "Deep Conditioner", "Detangling Spray", "Hair Mask"],
         ["Smoothing", "Moisture Rich", "Frizz Control", "Bond Building"]),
        ("Styling", ["Hair Spray", "Styling Gel", "Texturizing Paste", "Curl Cream"],
         ["Strong Hold", "Flexible Hold", "Humidity Proof", "Matte Finish"]),
        ("Hair Tools", ["Hair Dryer", "Flat Iron", "Curling Wand", "Paddle Brush"],
         ["Ionic", "Ceramic", "Salon Grade", "Cordless"]),
    ]),
    ("Makeup", [
        ("Face Makeup", ["Liquid Foundation", "Concealer", "Setting Powder", "Cream Blush"],
         ["Full Coverage", "Oil Free", "Radiant", "Long Wear"]),
        ("Eye Makeup", ["Mascara", "Gel Eyeliner", "Eyeshadow Palette", "Brow Pencil"],
         ["Waterproof", "Smudge Proof", "Lengthening", "Defining"]),
        ("Lip Makeup", ["Matte Lipstick", "Lip Gloss", "Lip Liner", "Tinted Lip Balm"],
         ["Velvet", "High Shine", "Plumping", "Transfer Proof"]),
        ("Nail Care", ["Nail Polish", "Gel Top Coat", "Polish Remover", "Cuticle Oil"],
         ["Quick Dry", "Chip Resistant", "Glossy", "Acetone Free"]),
    ]),
    ("Bath & Body", [
        ("Fragrance", ["Eau de Parfum", "Eau de Toilette", "Body Mist", "Rollerball Perfume"],
         ["Floral", "Woody", "Citrus", "Musky"]),
        ("Bath", ["Bath Bomb", "Bubble Bath", "Bath Salts", "Shower Gel"],
         ["Relaxing", "Foaming", "Aromatherapy", "Fizzing"]),
        ("Body Care", ["Body Lotion", "Body Butter", "Hand Cream", "Body Scrub"],
         ["Shea", "Non Greasy", "Softening", "Whipped"]),
        ("Men's Grooming", ["Shaving Cream", "Aftershave Balm", "Beard Oil", "Deodorant"],
         ["Cooling", "Sensitive Skin", "Fresh Scent", "All Day"]),
    ]),
]
# Per top: (sizes, variants, variant separator, base price, usage sentence).
_TOP_STYLE: dict[str, tuple[list[str], list[str], str, float, str]] = {
    "Skin Care": (["30 ml", "50 ml", "1 fl oz", "1.7 fl oz", "Travel Size"],
                  ["for Dry Skin", "for Oily Skin", "for Sensitive Skin", "for All Skin Types"], " ", 24.0,
                  "Apply to clean skin morning or night."),
    "Hair Care": (["250 ml", "8 fl oz", "12 fl oz", "Travel Size"],
                  ["for Curly Hair", "for Fine Hair", "for Thick Hair", "for Color Treated Hair"], " ", 16.0,
                  "Use on damp or dry hair as needed."),
    "Makeup": (["0.1 oz", "0.3 fl oz", "Mini", "Full Size"],
               ["Ivory", "Rose", "Coral", "Berry", "Nude", "Mocha", "Plum", "Ruby"], " - ", 14.0,
               "Blend or layer for a lasting look."),
    "Bath & Body": (["100 ml", "8 oz", "16 oz", "Gift Set"],
                    ["Lavender", "Vanilla", "Coconut", "Eucalyptus", "Sandalwood", "Unscented"], " - ", 18.0,
                    "Enjoy as part of your daily routine."),
}
_GENERIC_STYLE = (["Small", "Medium", "Large", "Value Pack"], ["Original", "Limited Edition", "Refill"], " - ",
                  20.0, "Made for everyday use.")
_MID_SIZES = {"Hair Tools": ["1 inch", "1.25 inch", "Compact", "Pro Size"]}
_MID_PRICE = {"Hair Tools": 3.5, "Fragrance": 2.2, "Treatments": 1.5, "Nail Care": 0.6}
_ADJECTIVES = ["Classic", "Advanced", "Daily", "Ultra", "Pure", "Essential", "Luxe", "Organic", "Pro", "Everyday",
               "Intensive", "Natural"]
_SYLLABLES = ["lu", "ver", "au", "so", "no", "mi", "ca", "be", "ze", "flo", "on", "ve", "se", "ka", "ra", "ma",
              "co", "li", "ro", "te", "va", "di", "ne", "sa"]
_BRAND_ENDINGS = ["", "", "", " Labs", " Naturals", " Beauty", " Studio", " & Co"]
_GENERATED_NOUNS = ["Kit", "Set", "Pack", "Tool", "Refill", "Formula"]


def _pseudo_word(rng: np.random.Generator, used: set[str], n_syll: int = 3) -> str:
    """A pronounceable made-up word not in ``used`` (for brands and for tree nodes beyond the vocabulary)."""
    while True:
        word = "".join(rng.choice(_SYLLABLES, size=n_syll)).capitalize()
        if word not in used:
            used.add(word)
            return word


def _category_names(
    cfg: SyntheticConfig, rng: np.random.Generator
) -> tuple[list[str], list[str], list[str], list[list[str]]]:
    """Names of the tree nodes: top names, mid names (global mid index), leaf names, attribute words per mid."""
    used: set[str] = set()
    tops, mids, leaves, attrs = [], [], [], []
    for t in range(cfg.n_top):
        top_name, top_mids = _TREE[t] if t < len(_TREE) else (f"{_pseudo_word(rng, used)} Goods", [])
        tops.append(top_name)
        for m in range(cfg.n_mid):
            if m < len(top_mids):
                mid_name, mid_leaves, mid_attrs = top_mids[m]
            else:
                mid_name = f"{_pseudo_word(rng, used)} Line"
                mid_leaves, mid_attrs = [], [_pseudo_word(rng, used, 2) + "ic" for _ in range(4)]
            mids.append(mid_name)
            attrs.append(list(mid_attrs))
            for leaf in range(cfg.n_leaf):
                if leaf < len(mid_leaves):
                    leaves.append(mid_leaves[leaf])
                else:
                    noun = _GENERATED_NOUNS[leaf % len(_GENERATED_NOUNS)]
                    leaves.append(f"{_pseudo_word(rng, used, 2)} {noun}")
    return tops, mids, leaves, attrs


# ---------------------------------------------------------------------------------------------- the latent world
@dataclass
class SyntheticWorld:
    """The latent truth behind a generated dataset (catalogue structure, popularity, complements, user tastes)."""

    config: SyntheticConfig
    top_names: list[str]
    mid_names: list[str]  # indexed by global mid id = top * n_mid + mid
    leaf_names: list[str]  # indexed by global leaf id = (top * n_mid + mid) * n_leaf + leaf
    mid_attrs: list[list[str]]
    item_leaf: np.ndarray  # [n_items] global leaf id
    popularity: np.ndarray  # [n_items] Zipf weights, sum 1
    complements: np.ndarray  # [n_items, n_complements] item ids, most likely first
    complement_weights: np.ndarray  # [n_complements] which complement a co-purchase picks
    brand_names: list[str]
    item_brand: np.ndarray  # [n_items] brand index
    price: np.ndarray  # [n_items]
    titles: list[str]
    descriptions: list[str]
    user_interests: np.ndarray  # [n_users, n_interests] leaf per slot at the start of the sequence
    user_weights: np.ndarray  # [n_users, n_interests] slot weights (sum 1)
    user_pref: np.ndarray  # [n_users, n_leaves] long-term taste used by the click model (sum 1)

    @property
    def n_leaves(self) -> int:
        return len(self.leaf_names)

    @property
    def item_mid(self) -> np.ndarray:
        return self.item_leaf // self.config.n_leaf

    @property
    def item_top(self) -> np.ndarray:
        return self.item_leaf // (self.config.n_leaf * self.config.n_mid)

    @property
    def leaf_pop(self) -> np.ndarray:
        return np.bincount(self.item_leaf, weights=self.popularity, minlength=self.n_leaves)

    def category_path(self, item: int) -> list[str]:
        leaf = int(self.item_leaf[item])
        mid = leaf // self.config.n_leaf
        return [self.top_names[mid // self.config.n_mid], self.mid_names[mid], self.leaf_names[leaf]]


def _streams(seed: int) -> list[np.random.Generator]:
    """Independent streams (catalogue, users, sequences, impressions): the world is rebuilt without the logs."""
    return [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(4)]


def _sample_segments(cum: np.ndarray, start: np.ndarray, end: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Inverse-CDF draws inside contiguous segments ``[start, end)`` of weights whose cumulative sum is ``cum``."""
    lo = np.where(start > 0, cum[np.maximum(start - 1, 0)], 0.0)
    target = lo + r * (cum[end - 1] - lo)
    return np.clip(np.searchsorted(cum, target, side="right"), start, end - 1)


def build_world(config: SyntheticConfig | None = None) -> SyntheticWorld:
    """Build the latent catalogue and user tastes for ``config`` (fast; no sequences or impressions)."""
    cfg = config or SyntheticConfig()
    rng_cat, rng_user, _, _ = _streams(cfg.seed)
    n, n_leaves = cfg.n_items, cfg.n_leaves
    tops, mids, leaves, attrs = _category_names(cfg, rng_cat)

    # Leaves get uneven sizes; every leaf has at least one item. Item ids are shuffled so they leak no category.
    sizes = np.ones(n_leaves, dtype=np.int64)
    sizes += rng_cat.multinomial(n - n_leaves, rng_cat.dirichlet(np.full(n_leaves, 5.0)))
    item_leaf = rng_cat.permutation(np.repeat(np.arange(n_leaves), sizes))
    rank = rng_cat.permutation(n) + 1
    pop = 1.0 / (rank + cfg.zipf_offset) ** cfg.zipf_exponent
    pop /= pop.sum()

    # Complement leaves: a sibling (same mid) and a leaf of another mid of the same top (cleanser -> moisturizer).
    comp_leaves: list[np.ndarray] = []
    for leaf in range(n_leaves):
        mid, top = leaf // cfg.n_leaf, leaf // (cfg.n_leaf * cfg.n_mid)
        siblings = [x for x in range(mid * cfg.n_leaf, (mid + 1) * cfg.n_leaf) if x != leaf]
        top_lo, top_hi = top * cfg.n_mid * cfg.n_leaf, (top + 1) * cfg.n_mid * cfg.n_leaf
        cousins = [x for x in range(top_lo, top_hi) if x // cfg.n_leaf != mid]
        chosen = [int(rng_cat.choice(pool)) for pool in (siblings, cousins) if pool]
        if not chosen:
            chosen = [int(rng_cat.choice([x for x in range(n_leaves) if x != leaf]))] if n_leaves > 1 else [leaf]
        comp_leaves.append(np.array(chosen))
    by_leaf = [np.flatnonzero(item_leaf == leaf) for leaf in range(n_leaves)]
    n_comp = cfg.n_complements
    complements = np.empty((n, n_comp), dtype=np.int64)
    for i in range(n):
        pool = np.concatenate([by_leaf[leaf] for leaf in comp_leaves[item_leaf[i]]])
        pool = pool[pool != i]
        if pool.size < n_comp:  # tiny leaves: top up with arbitrary other items
            others = np.setdiff1d(np.arange(n), np.append(pool, i))
            pool = np.concatenate([pool, rng_cat.choice(others, n_comp - pool.size, replace=False)])
        # Uniform (not popularity-weighted) so that only a sequence model, not a popularity ranker, explains them.
        complements[i] = rng_cat.choice(pool, n_comp, replace=False)
    comp_w = 0.55 ** np.arange(n_comp)
    comp_w /= comp_w.sum()

    # Brands: each has a home top and two home mids; items pick brands with a strong home-category affinity.
    used: set[str] = set()
    brand_names = [_pseudo_word(rng_cat, used, int(rng_cat.integers(2, 4)))
                   + _BRAND_ENDINGS[int(rng_cat.integers(len(_BRAND_ENDINGS)))] for _ in range(cfg.n_brands)]
    brand_top = np.arange(cfg.n_brands) % cfg.n_top
    brand_mids = brand_top[:, None] * cfg.n_mid + rng_cat.integers(cfg.n_mid, size=(cfg.n_brands, 2))
    item_mid = item_leaf // cfg.n_leaf
    item_top = item_mid // cfg.n_mid
    aff = np.where((brand_mids[None, :, :] == item_mid[:, None, None]).any(-1), 10.0,
                   np.where(brand_top[None, :] == item_top[:, None], 1.0, 0.05))
    cum = np.cumsum(aff / aff.sum(1, keepdims=True), axis=1)
    item_brand = np.minimum((cum < rng_cat.random(n)[:, None]).sum(1), cfg.n_brands - 1)

    # Prices: top base x mid multiplier x leaf factor x item noise, ending in .99.
    leaf_factor = rng_cat.lognormal(0.0, 0.35, n_leaves)
    base = np.array([_TOP_STYLE.get(tops[t], _GENERIC_STYLE)[3] for t in item_top])
    mid_mult = np.array([_MID_PRICE.get(mids[m], 1.0) for m in item_mid])
    raw = base * mid_mult * leaf_factor[item_leaf] * rng_cat.lognormal(0.0, 0.3, n)
    price = np.maximum(np.round(raw), 3.0) - 0.01

    # Text: per-item loop over 1-2k items (cheap); the draws are vectorised first.
    adj_on, var_on = rng_cat.random(n) < 0.6, rng_cat.random(n) < 0.7
    u_adj, u_attr, u_var, u_size = (rng_cat.random(n) for _ in range(4))
    titles, descriptions = [], []
    for i in range(n):
        top, mid, leaf = tops[item_top[i]], mids[item_mid[i]], leaves[item_leaf[i]]
        sizes_, variants, sep, _, usage = _TOP_STYLE.get(top, _GENERIC_STYLE)
        sizes_ = _MID_SIZES.get(mid, sizes_)
        attr = attrs[item_mid[i]][int(u_attr[i] * len(attrs[item_mid[i]]))]
        adj = _ADJECTIVES[int(u_adj[i] * len(_ADJECTIVES))]
        brand = brand_names[item_brand[i]]
        title = f"{brand} {adj + ' ' if adj_on[i] else ''}{attr} {leaf}"
        if var_on[i]:
            title += sep + variants[int(u_var[i] * len(variants))]
        titles.append(f"{title}, {sizes_[int(u_size[i] * len(sizes_))]}")
        article = "An" if attr[0].lower() in "aeiou" else "A"
        descriptions.append(
            f"{article} {attr.lower()} {leaf.lower()} by {brand} from our {mid.lower()} range"
            f" in {top.lower()}. {usage}"
        )

    # Users: a home top, interest slots mostly inside it, Dirichlet slot weights.
    users_n, k = cfg.n_users, cfg.n_interests
    leaf_pop = np.bincount(item_leaf, weights=pop, minlength=n_leaves)
    leaf_cum = np.cumsum(leaf_pop)
    per_top = cfg.n_mid * cfg.n_leaf
    top_pop = leaf_pop.reshape(cfg.n_top, per_top).sum(1)
    home = np.minimum((np.cumsum(top_pop)[None, :] < rng_user.random(users_n)[:, None]).sum(1), cfg.n_top - 1)
    in_home = _sample_segments(leaf_cum, np.repeat(home[:, None] * per_top, k, 1),
                               np.repeat((home[:, None] + 1) * per_top, k, 1), rng_user.random((users_n, k)))
    anywhere = np.minimum(np.searchsorted(leaf_cum, rng_user.random((users_n, k)) * leaf_cum[-1], "right"),
                          n_leaves - 1)
    stay = rng_user.random((users_n, k)) < 0.6
    stay[:, 0] = True
    interests = np.where(stay, in_home, anywhere)
    weights = rng_user.dirichlet(np.ones(k), size=users_n)
    # Long-term taste: interest slots, smeared over their mids (sibling draws), plus a global popularity floor.
    pref = np.zeros((users_n, n_leaves))
    rows = np.repeat(np.arange(users_n), k)
    np.add.at(pref, (rows, interests.ravel()), (1.0 - cfg.sibling_rate) * weights.ravel())
    mid_first = (interests // cfg.n_leaf) * cfg.n_leaf
    for j in range(cfg.n_leaf):
        np.add.at(pref, (rows, (mid_first + j).ravel()), cfg.sibling_rate * weights.ravel() / cfg.n_leaf)
    pref = 0.9 * pref + 0.1 * leaf_pop[None, :]

    return SyntheticWorld(
        cfg, tops, mids, leaves, attrs, item_leaf.astype(np.int64), pop, complements, comp_w, brand_names,
        item_brand.astype(np.int64), price, titles, descriptions, interests.astype(np.int64), weights, pref,
    )


# ---------------------------------------------------------------------------------------------- click model
class ClickModel:
    """The true click model of the synthetic impressions (formula in the module docstring).

    Inputs everywhere: ``user`` (dense user id), ``history`` (item ids the user interacted with before the
    impression, oldest first; only the last ``history_window`` matter) and ``items`` (the displayed list, top
    first; ``-1`` marks padding, which gets probability 0 and does not count as context).
    """

    def __init__(self, item_leaf: np.ndarray, n_leaf_per_mid: int, popularity: np.ndarray, complements: np.ndarray,
                 user_pref: np.ndarray, params: ClickParams | dict[str, Any]):
        self.params = params if isinstance(params, ClickParams) else ClickParams(**params)
        self.item_leaf = np.asarray(item_leaf, dtype=np.int64)
        self.item_mid = self.item_leaf // n_leaf_per_mid
        self.complements = np.asarray(complements, dtype=np.int64)
        self.user_pref = np.asarray(user_pref, dtype=np.float64)
        self.n_leaves = self.user_pref.shape[1]
        log_pop = np.log(np.asarray(popularity, dtype=np.float64))
        self.pop_z = (log_pop - log_pop.mean()) / max(float(log_pop.std()), 1e-12)

    # -- construction
    @classmethod
    def from_world(cls, world: SyntheticWorld) -> ClickModel:
        return cls(world.item_leaf, world.config.n_leaf, world.popularity, world.complements, world.user_pref,
                   ClickParams.from_config(world.config))

    @classmethod
    def from_config(cls, config: SyntheticConfig) -> ClickModel:
        return cls.from_world(build_world(config))

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> ClickModel:
        """Rebuild from ``dataset.meta`` (the latent world is regenerated from the stored config and seed)."""
        if meta.get("generator") != __name__:
            raise ValueError("dataset meta was not written by thinkrec.data.synthetic; no known click model")
        if meta.get("version") != GENERATOR_VERSION:
            raise ValueError(
                f"synthetic generator version {meta.get('version')} != {GENERATOR_VERSION}: regenerate the dataset"
            )
        return cls.from_config(SyntheticConfig(**meta["config"]))

    @classmethod
    def from_dataset(cls, dataset: Dataset) -> ClickModel:
        """:meth:`from_meta`, checked against the dataset's catalogue (guards against a stale generator)."""
        model = cls.from_meta(dataset.meta)
        if "leaf" in dataset.items.columns and not np.array_equal(
            dataset.items.sort("item")["leaf"].to_numpy(), model.item_leaf
        ):
            raise ValueError("the regenerated catalogue does not match this dataset; regenerate the dataset")
        return model

    # -- pieces
    def examination(self, n: int) -> np.ndarray:
        """Position bias: probability that position ``k`` (0-based) is examined."""
        return (1.0 + np.arange(n)) ** -self.params.position_decay

    def _recent(self, histories: Sequence[np.ndarray]) -> np.ndarray:
        """Last ``history_window`` items of each history, most recent first, ``-1`` padded: ``[B, W]``."""
        w = self.params.history_window
        out = np.full((len(histories), w), -1, dtype=np.int64)
        for b, h in enumerate(histories):
            tail = np.asarray(h, dtype=np.int64)[-w:][::-1]
            out[b, : tail.size] = tail
        return out

    def _state(self, users: np.ndarray, recent: np.ndarray) -> np.ndarray:
        valid = recent >= 0
        counts = np.zeros((recent.shape[0], self.n_leaves))
        rows = np.broadcast_to(np.arange(recent.shape[0])[:, None], recent.shape)
        np.add.at(counts, (rows[valid], self.item_leaf[recent[valid]]), 1.0)
        n_hist = valid.sum(1, keepdims=True)
        w = np.where(n_hist > 0, self.params.history_weight, 0.0)
        return (1.0 - w) * self.user_pref[users] + w * counts / np.maximum(n_hist, 1)

    def _logits(self, users: np.ndarray, recent: np.ndarray, items: np.ndarray,
                state: np.ndarray | None = None) -> np.ndarray:
        p = self.params
        state = self._state(users, recent) if state is None else state
        safe = np.maximum(items, 0)
        aff = np.take_along_axis(state, self.item_leaf[safe], axis=1)
        last = recent[:, 0]
        comp = self.complements[np.maximum(last, 0)]  # [B, C]
        is_comp = (comp[:, None, :] == items[:, :, None]).any(-1) & (last >= 0)[:, None]
        return (p.attract_bias + p.pref_weight * np.log(self.n_leaves * aff + _STATE_SMOOTH)
                + p.pop_weight * self.pop_z[safe] + p.complement_bonus * is_comp)

    def _discount(self, items: np.ndarray) -> np.ndarray:
        """List-context redundancy: each similar item shown above multiplies the click probability down."""
        valid = items >= 0
        safe = np.maximum(items, 0)
        leaf, mid = self.item_leaf[safe], self.item_mid[safe]
        above = np.tril(np.ones((items.shape[1],) * 2, dtype=bool), k=-1)[None] & valid[:, None, :]
        same_leaf = (leaf[:, :, None] == leaf[:, None, :]) & above
        same_mid = (mid[:, :, None] == mid[:, None, :]) & above & ~same_leaf
        p = self.params
        return p.leaf_redundancy ** same_leaf.sum(-1) * p.mid_redundancy ** same_mid.sum(-1)

    def _probs(self, users: np.ndarray, recent: np.ndarray, items: np.ndarray,
               state: np.ndarray | None = None) -> np.ndarray:
        attract = 1.0 / (1.0 + np.exp(-self._logits(users, recent, items, state)))
        probs = self.examination(items.shape[1])[None, :] * attract * self._discount(items)
        return np.where(items >= 0, probs, 0.0)

    # -- public API
    def user_state(self, user: int, history: np.ndarray) -> np.ndarray:
        """The user's leaf-preference vector at the impression (long-term taste blended with recent history)."""
        return self._state(np.array([user]), self._recent([history]))[0]

    def attractiveness(self, user: int, history: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Per-item click probability if examined with no redundancy (independent of the order)."""
        items2 = np.asarray(items, dtype=np.int64)[None, :]
        return 1.0 / (1.0 + np.exp(-self._logits(np.array([user]), self._recent([history]), items2)[0]))

    def click_probs(self, user: int, history: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Per-position click probabilities of ``items`` displayed top-to-bottom to ``user`` after ``history``."""
        items2 = np.asarray(items, dtype=np.int64)[None, :]
        return self._probs(np.array([user]), self._recent([history]), items2)[0]

    def expected_clicks(self, user: int, history: np.ndarray, items: np.ndarray) -> float:
        """Expected number of clicks on the displayed list (clicks are independent given the list)."""
        return float(self.click_probs(user, history, items).sum())

    def click_probs_batch(
        self, users: np.ndarray, histories: Sequence[np.ndarray], items: np.ndarray
    ) -> np.ndarray:
        """Batched :meth:`click_probs`: ``users [B]``, ``histories`` (B arrays), ``items [B, K]`` -> ``[B, K]``."""
        return self._probs(np.asarray(users, dtype=np.int64), self._recent(histories),
                           np.asarray(items, dtype=np.int64))

    def expected_clicks_batch(
        self, users: np.ndarray, histories: Sequence[np.ndarray], items: np.ndarray
    ) -> np.ndarray:
        """Batched :meth:`expected_clicks` -> ``[B]``."""
        return self.click_probs_batch(users, histories, items).sum(1)

    def impression_probs(self, impressions: pl.DataFrame) -> np.ndarray:
        """Click probabilities of the logged lists of an impressions frame, ``[n, max_len]`` (0 on padding)."""
        lists = impressions["items"].to_list()
        width = max((len(x) for x in lists), default=0)
        items = np.full((len(lists), width), -1, dtype=np.int64)
        for b, row in enumerate(lists):
            items[b, : len(row)] = row
        histories = [np.asarray(h, dtype=np.int64) for h in impressions["history"].to_list()]
        return self.click_probs_batch(impressions["user"].to_numpy(), histories, items)

    def greedy_order(self, user: int, history: np.ndarray, items: np.ndarray) -> np.ndarray:
        """A strong reference ordering: fill positions top-down with the item of largest marginal click
        probability given the items already placed (a heuristic, not a proven optimum)."""
        items = np.asarray(items, dtype=np.int64)
        if (items < 0).any():
            raise ValueError("greedy_order takes an unpadded list (no -1 entries)")
        attract = self.attractiveness(user, history, items)
        leaf, mid = self.item_leaf[items], self.item_mid[items]
        exam = self.examination(items.size)
        p = self.params
        left = np.ones(items.size, dtype=bool)
        order: list[int] = []
        for k in range(items.size):
            placed = np.array(order, dtype=np.int64)
            n_leaf = (leaf[placed][None, :] == leaf[:, None]).sum(1)
            n_mid = (mid[placed][None, :] == mid[:, None]).sum(1) - n_leaf
            marginal = exam[k] * attract * p.leaf_redundancy**n_leaf * p.mid_redundancy**n_mid
            gain = np.where(left, marginal, -1.0)
            best = int(np.argmax(gain))
            order.append(best)
            left[best] = False
        return np.array(order, dtype=np.int64)


# ---------------------------------------------------------------------------------------------- simulation
def _interest_leaf(world: SyntheticWorld, interests: np.ndarray, weights: np.ndarray,
                   rng: np.random.Generator) -> np.ndarray:
    """Pick a slot by weight, then sometimes a random sibling of its leaf (interest spills over the mid)."""
    cfg = world.config
    slot = np.minimum((np.cumsum(weights, 1) < rng.random(len(weights))[:, None]).sum(1), weights.shape[1] - 1)
    leaf = interests[np.arange(len(weights)), slot]
    sib = rng.random(leaf.size) < cfg.sibling_rate
    leaf[sib] = (leaf[sib] // cfg.n_leaf) * cfg.n_leaf + rng.integers(cfg.n_leaf, size=int(sib.sum()))
    return leaf


class _ItemSampler:
    """Popularity-weighted item draws, globally or within given leaves (inverse CDF over leaf-sorted items)."""

    def __init__(self, world: SyntheticWorld):
        self.order = np.argsort(world.item_leaf, kind="stable")
        self.cum = np.cumsum(world.popularity[self.order])
        sorted_leaf = world.item_leaf[self.order]
        self.start = np.searchsorted(sorted_leaf, np.arange(world.n_leaves), "left")
        self.end = np.searchsorted(sorted_leaf, np.arange(world.n_leaves), "right")
        self.global_cum = np.cumsum(world.popularity)

    def in_leaf(self, leaf: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return self.order[_sample_segments(self.cum, self.start[leaf], self.end[leaf], rng.random(leaf.size))]

    def anywhere(self, size: int, rng: np.random.Generator) -> np.ndarray:
        idx = np.searchsorted(self.global_cum, rng.random(size) * self.global_cum[-1], "right")
        return np.minimum(idx, self.global_cum.size - 1)


def _simulate_sequences(
    world: SyntheticWorld, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Purchase sequences ``[n_users, T]`` (-1 padded), their lengths and timestamps.

    Vectorised over users; the only Python loop is over time steps (at most ``max_seq_len``).
    """
    cfg = world.config
    n_users, k = cfg.n_users, cfg.n_interests
    extra_mean = cfg.mean_seq_len - cfg.min_seq_len
    # Lengths: min + negative binomial (a long tail of heavy users, like real logs).
    if extra_mean > 0:
        extra = rng.negative_binomial(2, 2.0 / (2.0 + extra_mean), n_users)
    else:
        extra = np.zeros(n_users, dtype=np.int64)
    lengths = np.minimum(cfg.min_seq_len + extra, cfg.max_seq_len).astype(np.int64)
    t_max = int(lengths.max())
    seq = np.full((n_users, t_max), -1, dtype=np.int64)
    interests = world.user_interests.copy()
    sampler = _ItemSampler(world)
    leaf_cum = np.cumsum(world.leaf_pop)
    per_top = cfg.n_mid * cfg.n_leaf
    for t in range(t_max):
        act = np.flatnonzero(lengths > t)
        if t > 0 and cfg.drift_rate > 0:
            d = act[rng.random(act.size) < cfg.drift_rate]
            slot = rng.integers(k, size=d.size)
            old_top = interests[d, slot] // per_top
            # Drift stays in the same top half of the time (tastes move to neighbours more than across the shop).
            near = _sample_segments(leaf_cum, old_top * per_top, (old_top + 1) * per_top, rng.random(d.size))
            far = np.searchsorted(leaf_cum, rng.random(d.size) * leaf_cum[-1], "right")
            far = np.minimum(far, world.n_leaves - 1)
            interests[d, slot] = np.where(rng.random(d.size) < 0.5, near, far)
        item = sampler.in_leaf(_interest_leaf(world, interests[act], world.user_weights[act], rng), rng)
        r = rng.random(act.size)
        if t > 0:
            comp = r < cfg.copurchase_rate
            pick = np.minimum((np.cumsum(world.complement_weights)[None, :] < rng.random(int(comp.sum()))[:, None])
                              .sum(1), cfg.n_complements - 1)
            item[comp] = world.complements[seq[act[comp], t - 1], pick]
        explore = (r >= cfg.copurchase_rate) & (r < cfg.copurchase_rate + cfg.explore_rate)
        item[explore] = sampler.anywhere(int(explore.sum()), rng)
        # Redraw already-bought items (no repeat purchases, as in 5-core review data): first from the user's
        # interests, then anywhere; rare leftovers repeat. "Bought" is looked up in the user's own row of ``seq``
        # (at most ``max_seq_len`` items), so memory stays O(users × max_seq_len), never users × items.
        for attempt in range(12):
            bad = np.flatnonzero((seq[act, :t] == item[:, None]).any(1)) if t else np.zeros(0, np.int64)
            if bad.size == 0:
                break
            if attempt < 8:
                u = act[bad]
                item[bad] = sampler.in_leaf(_interest_leaf(world, interests[u], world.user_weights[u], rng), rng)
            else:
                item[bad] = sampler.anywhere(bad.size, rng)
        seq[act, t] = item
    # Strictly increasing timestamps: random start within 180 days, gaps of 1 hour to 7 days.
    start = cfg.start_ts + rng.integers(0, 180 * _SECONDS_PER_DAY, n_users)
    gaps = rng.integers(3600, 7 * _SECONDS_PER_DAY, (n_users, t_max))
    ts = start[:, None] + np.cumsum(gaps, axis=1)
    return seq, lengths, ts


def _simulate_impressions(world: SyntheticWorld, model: ClickModel, seq: np.ndarray, lengths: np.ndarray,
                          ts: np.ndarray, rng: np.random.Generator) -> dict[str, Any]:
    """Logged lists: a noisy logging policy picks and orders ``list_len`` items; clicks follow ``model``."""
    cfg = world.config
    n_imp, n_items, width = cfg.n_impressions, cfg.n_items, cfg.list_len
    users = rng.integers(cfg.n_users, size=n_imp)
    cut = 1 + np.minimum((rng.random(n_imp) * lengths[users]).astype(np.int64), lengths[users] - 1)  # history len
    pos = cut[:, None] - 1 - np.arange(cfg.history_window)[None, :]
    recent = np.where(pos >= 0, seq[users[:, None], np.maximum(pos, 0)], -1)
    items_out = np.empty((n_imp, width), dtype=np.int64)
    probs_out = np.empty((n_imp, width))
    in_leaf_share = world.popularity / world.leaf_pop[world.item_leaf]
    # Chunks bound the [B, n_items] proposal matrices to ~160 MB each (1000 rows up to 20k items, as always).
    chunk = max(1, min(1000, 20_000_000 // n_items))
    for lo in range(0, n_imp, chunk):
        b = slice(lo, min(lo + chunk, n_imp))
        nb = b.stop - b.start
        state = model._state(users[b], recent[b])
        # Candidate generation mimics a production retriever: interests, popularity, complements, some randomness.
        q = 0.55 * state[:, world.item_leaf] * in_leaf_share[None, :] + 0.25 * world.popularity[None, :]
        q += 0.10 / n_items
        rows = np.arange(nb)
        q[rows[:, None], world.complements[recent[b, 0]]] += 0.10 / cfg.n_complements
        hist = np.arange(seq.shape[1])[None, :] < cut[b, None]  # never show what the user already bought
        q[np.broadcast_to(rows[:, None], hist.shape)[hist], seq[users[b]][hist]] = 0.0
        with np.errstate(divide="ignore"):
            g = np.log(q) + rng.gumbel(size=q.shape)
        cand = np.argpartition(-g, width - 1, axis=1)[:, :width]
        # Display order: the true attractiveness plus noise (the logger ignores redundancy: room for re-rankers).
        score = model._logits(users[b], recent[b], cand, state) + cfg.logging_noise * rng.gumbel(size=cand.shape)
        shown = np.take_along_axis(cand, np.argsort(-score, axis=1, kind="stable"), axis=1)
        items_out[b] = shown
        probs_out[b] = model._probs(users[b], recent[b], shown, state)
    clicks = (rng.random(probs_out.shape) < probs_out).astype(np.int8)
    imp_ts = ts[users, cut - 1] + rng.integers(1, 3600, n_imp)  # before the next purchase (gaps are >= 1 h)
    order = np.lexsort((users, imp_ts))  # impression ids follow time, so a temporal split is a prefix
    return {"users": users[order], "cut": cut[order], "ts": imp_ts[order], "items": items_out[order],
            "clicks": clicks[order]}


# ---------------------------------------------------------------------------------------------- item vectors
def item_vectors(dataset: Dataset, dim: int = 64, noise: float = 0.35, seed: int = 0) -> np.ndarray:
    """Content vectors from the generated catalogue's own attributes, no text encoder: a random direction per
    top, mid and leaf category and per brand, summed with falling weights, plus per-item noise; ``float32
    [n_items, dim]``, unit rows. Items of a leaf cluster, brands split them, the noise keeps them distinct — the
    structure a text embedding of the generated titles carries, at any catalogue size in seconds (MiniLM embeds
    ~100 titles/s on 2 CPU cores, ~3 h for 1M items)."""
    items = dataset.items
    missing = [c for c in ("top", "mid", "leaf", "brand") if c not in items.columns]
    if missing:
        raise ValueError(f"dataset {dataset.name!r}: item_vectors needs the generator's item columns; missing {missing}")
    rng = np.random.default_rng([seed, 7])
    top, mid, leaf = (items[c].to_numpy().astype(np.int64) for c in ("top", "mid", "leaf"))
    brand = items["brand"].cast(pl.Categorical).to_physical().to_numpy().astype(np.int64)
    x = np.zeros((items.height, dim), dtype=np.float32)
    for codes, weight in ((top, 1.0), (mid, 0.7), (leaf, 0.5), (brand, 0.3)):
        x += weight * rng.standard_normal((int(codes.max()) + 1, dim)).astype(np.float32)[codes]
    x += noise * rng.standard_normal(x.shape).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True).clip(min=1e-12)
    return x


# ---------------------------------------------------------------------------------------------- entry point
def generate(config: SyntheticConfig | None = None) -> Dataset:
    """Generate the synthetic dataset (name ``"synthetic"``); ``meta`` holds the config and click-model params.

    Dense ids equal the generator's indices: user ``u`` is ``"u{u:05d}"``, item ``i`` is ``"i{i:05d}"``.
    """
    cfg = config or SyntheticConfig()
    world = build_world(cfg)
    model = ClickModel.from_world(world)
    _, _, rng_seq, rng_imp = _streams(cfg.seed)
    seq, lengths, ts = _simulate_sequences(world, rng_seq)

    valid = np.arange(seq.shape[1])[None, :] < lengths[:, None]
    user_idx = np.broadcast_to(np.arange(cfg.n_users)[:, None], seq.shape)[valid]
    interactions = pl.DataFrame({
        "user_id": [f"u{u:05d}" for u in user_idx],
        "item_id": [f"i{i:05d}" for i in seq[valid]],
        "ts": ts[valid],
    })
    item_ids = [f"i{i:05d}" for i in range(cfg.n_items)]
    paths = [world.category_path(i) for i in range(cfg.n_items)]
    items = pl.DataFrame({
        "item_id": item_ids,
        "title": world.titles,
        "brand": [world.brand_names[b] for b in world.item_brand],
        "categories": paths,
        "description": world.descriptions,
        "price": world.price,
        "category_path": [" > ".join(p) for p in paths],
        "top": world.item_top.astype(np.int32),
        "mid": world.item_mid.astype(np.int32),
        "leaf": world.item_leaf.astype(np.int32),
    }, schema_overrides={"categories": pl.List(pl.Utf8)})

    impressions = None
    if cfg.n_impressions > 0:
        imp = _simulate_impressions(world, model, seq, lengths, ts, rng_imp)
        impressions = pl.DataFrame({
            "impression": np.arange(cfg.n_impressions, dtype=np.int64),
            "user_id": [f"u{u:05d}" for u in imp["users"]],
            "ts": imp["ts"],
            "history_orig": [
                [item_ids[x] for x in seq[u, :c]] for u, c in zip(imp["users"], imp["cut"], strict=True)
            ],
            "items_orig": [[item_ids[x] for x in row] for row in imp["items"]],
            "clicks": [row.tolist() for row in imp["clicks"]],
        }, schema_overrides={"clicks": pl.List(pl.Int8)})

    meta = {
        "generator": __name__,
        "version": GENERATOR_VERSION,
        "config": asdict(cfg),
        "click_model": {
            "type": "position-based x attractiveness x leaf/mid redundancy (see thinkrec.data.synthetic)",
            **asdict(ClickParams.from_config(cfg)),
        },
        "n_leaves": world.n_leaves,
        "leaf_names": world.leaf_names,
    }
    ds = Dataset.from_frames("synthetic", interactions, items, impressions, meta)
    # from_frames numbers users by first appearance and items by catalogue order; the latent world relies on
    # these matching the generator's indices, so check rather than assume.
    if not (ds.users["user_id"].to_list() == [f"u{u:05d}" for u in range(cfg.n_users)]
            and ds.items["item_id"].to_list() == item_ids):
        raise AssertionError("dense ids diverged from generator indices")
    return ds
