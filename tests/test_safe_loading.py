"""No code path deserialises with pickle: a file in a run directory, a checkpoint or a dataset may come from
someone else. A static scan of the package for every loader that can execute code."""

from __future__ import annotations

import re
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "thinkrec"
UNSAFE = {
    "pickle / dill / joblib / marshal": re.compile(r"^\s*(import|from)\s+(pickle|cPickle|dill|joblib|marshal)\b"
                                                   r"|\b(pickle|dill|joblib|marshal)\.loads?\("),
    "torch.load without weights_only=True": re.compile(r"torch\.load\((?![^)]*weights_only\s*=\s*True)"),
    "weights_only=False": re.compile(r"weights_only\s*=\s*False"),
    "np.load without allow_pickle=False": re.compile(r"np\.load\((?![^)]*allow_pickle\s*=\s*False)"),
    "yaml.load / unsafe_load": re.compile(r"yaml\.(load|unsafe_load|full_load)\("),
    "eval / exec": re.compile(r"(?<![\w.])(eval|exec)\("),
    "pandas.read_pickle": re.compile(r"read_pickle\("),
}


def test_no_unsafe_deserialisation_in_the_package():
    hits = []
    for path in sorted(SRC.rglob("*.py")):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            hits += [f"{path.relative_to(SRC)}:{n}: {what}: {line.strip()}" for what, rx in UNSAFE.items()
                     if rx.search(code)]
    assert not hits, "\n".join(hits)


def test_the_scan_catches_what_it_looks_for():
    bad = ["import pickle", "torch.load(p)", "torch.load(p, weights_only=False)", "np.load(f)", "yaml.load(s)",
           "x = eval(s)", "pd.read_pickle(p)"]
    for line in bad:
        assert any(rx.search(line) for rx in UNSAFE.values()), line
    ok = ["torch.load(p, weights_only=True)", "np.load(f, allow_pickle=False)", "yaml.safe_load(s)", "model.eval()"]
    for line in ok:
        assert not any(rx.search(line) for rx in UNSAFE.values()), line
