"""SASRec with a sparse item table (``sparse_items``) under ``torchrun``: writes whether the ranks' weights are
bit-identical after training (DDP all-reduces the sparse gradients) and the validation history.

    torchrun --nproc_per_node 2 -m tests.distributed.sparse_worker OUT.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from tests.baselines.test_sasrec import _planted
from thinkrec.baselines.sasrec import SASRecConfig, train_sasrec
from thinkrec.data.splits import leave_one_out
from thinkrec.utils import distributed as dist

if __name__ == "__main__":
    with dist.process_group():
        torch.set_num_threads(1)
        cfg = SASRecConfig(d_model=16, n_layers=1, n_heads=2, dropout=0.0, max_len=10, lr=5e-3, batch_size=24,
                           epochs=2, loss="sampled", negatives=8, sparse_items=True)
        model, history = train_sasrec(leave_one_out(_planted(n_users=120)), cfg, log=lambda m: None)
        weights = torch.cat([p.detach().flatten() for p in model.parameters()])
        replicas = [torch.zeros_like(weights) for _ in range(dist.size())]
        torch.distributed.all_gather(replicas, weights)
        if dist.is_main():
            Path(sys.argv[1]).write_text(json.dumps({
                "equal": all(torch.equal(replicas[0], r) for r in replicas), "sparse": model.item_emb.sparse,
                "valid_ndcg@10": [h["valid_ndcg@10"] for h in history]}))
