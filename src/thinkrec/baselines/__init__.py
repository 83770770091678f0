"""Classic baselines: popularity, SASRec (full-softmax cross-entropy), also the funnel's pre-ranker, and BSARec
(SASRec with a frequency filter mixed into every layer)."""

from thinkrec.baselines.bsarec import BSARec, BSARecConfig
from thinkrec.baselines.popularity import Popularity
from thinkrec.baselines.sasrec import SASRec, SASRecConfig, train_sasrec

__all__ = ["BSARec", "BSARecConfig", "Popularity", "SASRec", "SASRecConfig", "train_sasrec"]
