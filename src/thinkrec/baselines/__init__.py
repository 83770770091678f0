"""Classic baselines: popularity and SASRec (full-softmax cross-entropy), also the funnel's pre-ranker."""

from thinkrec.baselines.popularity import Popularity
from thinkrec.baselines.sasrec import SASRec, SASRecConfig, train_sasrec

__all__ = ["Popularity", "SASRec", "SASRecConfig", "train_sasrec"]
