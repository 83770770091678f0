"""Reference timing: RecBole 1.2.1's SASRec (full-softmax CE) on Amazon Beauty 2014, leave-one-out.

RecBole is NOT a thinkrec dependency. Run this with a throwaway venv outside the repo, e.g.::

    python3 -m venv /work/recbole-venv
    /work/recbole-venv/bin/pip install torch==2.13.0          # CPU wheel first (a bare `torch` pulls CUDA)
    /work/recbole-venv/bin/pip install recbole==1.2.1
    /work/recbole-venv/bin/pip install numpy==1.26.4 pandas==2.2.3 scipy==1.13.1   # RecBole 1.2.1 predates numpy 2 / pandas 3

    cd /work/main
    /work/recbole-venv/bin/python benchmarks/recbole_sasrec.py --data-root ../shared/data --epochs 1 \
        --out benchmarks/results/sasrec_beauty_recbole.json [--max-users N] [--threads T]

What it does:
  * converts ``amazon_beauty_2014/Beauty.txt`` (``user item item ...``, time-ordered, 1-based) into a RecBole
    atomic file ``beauty.inter`` (user_id:token, item_id:token, timestamp:float = position in the sequence) in a
    temp dir, so RecBole's ``LS valid_and_test`` / ``TO`` split gives last item = test, second last = validation;
  * turns off every RecBole filter and checks that users / items / interactions survive unchanged
    (full data: 22,363 users + padding, 12,101 items + padding, 198,502 interactions);
  * trains SASRec (CE over all items) for ``--epochs`` epochs with validation on NDCG@10 after each epoch,
    timing every ``_train_epoch`` call (wall seconds), then evaluates the best checkpoint on the test set;
  * writes a one-row JSON list (atomically) with test Recall/NDCG@5/10, s_per_epoch, peak RSS and versions.

Note on comparing seconds per epoch: RecBole's sequential datasets are *augmented*: every prefix of a training
sequence is its own training example (sum over users of len-3 = 131,413 examples on full Beauty), each predicting
only its last item. A per-user shifted-sequence trainer (loss at every position) sees 22,363 rows per epoch covering
the same targets, so one "epoch" is not the same amount of computation; ``details`` records both counts.

RecBole writes ./log, ./log_tensorboard and checkpoints relative to the working directory; this script chdirs into
its temp dir while RecBole runs, so nothing is written into the repository except ``--out``.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

BEAUTY_USERS, BEAUTY_ITEMS, BEAUTY_INTERS = 22_363, 12_101, 198_502


def _compat_patches() -> None:
    """Small runtime shims for RecBole 1.2.1 on a recent stack (no site-packages edits).

    * torch >= 2.6 defaults ``torch.load(weights_only=True)``; RecBole's checkpoint holds its Config object, so
      ``Trainer.evaluate(load_best_model=True)`` would fail. We only ever load the checkpoint this process just
      wrote, so default ``weights_only`` to False.
    * numpy 2 removed ``np.float_`` / ``np.complex_`` / ``np.unicode_``, which RecBole's
      ``Config.compatibility_settings`` reads (to re-create ``np.float`` etc.). The tested venv pins numpy 1.26.4;
      this only matters if someone runs it under numpy 2.
    """
    if not getattr(torch.load, "_recbole_patched", False):
        orig_load = torch.load

        @functools.wraps(orig_load)
        def load(*args: Any, **kwargs: Any) -> Any:
            kwargs.setdefault("weights_only", False)
            return orig_load(*args, **kwargs)

        load._recbole_patched = True  # type: ignore[attr-defined]
        torch.load = load  # type: ignore[assignment]
    if int(np.__version__.split(".")[0]) >= 2:
        for name, value in {"float_": np.float64, "complex_": np.complex128, "unicode_": np.str_}.items():
            if name not in np.__dict__:
                setattr(np, name, value)


def write_atomic_inter(beauty_txt: Path, dataset_dir: Path, max_users: int | None) -> dict[str, int]:
    """Write ``beauty.inter`` from Beauty.txt (optionally only the first ``max_users`` lines); returns counts."""
    dataset_dir.mkdir(parents=True, exist_ok=True)
    users, items, n_inter, min_len = 0, set(), 0, None
    with beauty_txt.open() as src, (dataset_dir / "beauty.inter").open("w") as dst:
        dst.write("user_id:token\titem_id:token\ttimestamp:float\n")
        for line in src:
            parts = line.split()
            if not parts:
                continue
            if max_users is not None and users >= max_users:
                break
            user, seq = parts[0], parts[1:]
            if len(seq) < 3:
                raise ValueError(f"user {user} has {len(seq)} < 3 items: leave-one-out needs >= 3")
            if len(set(seq)) != len(seq):
                raise ValueError(
                    f"user {user} repeats an item; RecBole would still keep it, but Beauty has none"
                )
            for pos, item in enumerate(seq):
                dst.write(f"{user}\t{item}\t{pos}\n")
            users += 1
            items.update(seq)
            n_inter += len(seq)
            min_len = len(seq) if min_len is None else min(min_len, len(seq))
    return {"users": users, "items": len(items), "interactions": n_inter, "min_seq_len": min_len or 0}


def build_config_dict(args: argparse.Namespace, data_path: Path, checkpoint_dir: Path) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        # environment
        "data_path": str(data_path),
        "checkpoint_dir": str(checkpoint_dir),
        "use_gpu": False,
        "gpu_id": "",
        "worker": 0,
        "seed": args.seed,
        "reproducibility": True,
        "show_progress": False,
        "state": "INFO",
        "log_wandb": False,
        "save_dataset": False,
        "save_dataloaders": False,
        # atomic file / fields
        "USER_ID_FIELD": "user_id",
        "ITEM_ID_FIELD": "item_id",
        "TIME_FIELD": "timestamp",
        "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
        # no filtering or remapping beyond token -> contiguous id (Beauty is already 5-core)
        "rm_dup_inter": None,
        "val_interval": None,
        "filter_inter_by_user_or_item": False,
        "user_inter_num_interval": "[0,inf)",
        "item_inter_num_interval": "[0,inf)",
        "MAX_ITEM_LIST_LENGTH": 50,
        # model (RecBole SASRec defaults, listed explicitly)
        "n_layers": 2,
        "n_heads": 2,
        "hidden_size": 64,
        "inner_size": 256,
        "hidden_dropout_prob": args.dropout,
        "attn_dropout_prob": args.dropout,
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-12,
        "initializer_range": 0.02,
        "loss_type": "CE",
        # training
        "epochs": args.epochs,
        "train_batch_size": args.train_batch_size,
        "learner": "adam",
        "learning_rate": args.lr,
        "weight_decay": 0.0,
        "train_neg_sample_args": None,
        "eval_step": 1,
        "stopping_step": 10,
        # evaluation: leave-one-out, full ranking over all items
        "eval_args": {
            "split": {"LS": "valid_and_test"},
            "order": "TO",
            "group_by": "user",
            "mode": "full",
        },
        "metrics": ["Recall", "NDCG"],
        "topk": [5, 10],
        "valid_metric": "NDCG@10",
        "eval_batch_size": args.eval_batch_size,
        "metric_decimal_place": 6,
    }
    return cfg


def check_counts(
    dataset: Any, train_data: Any, valid_data: Any, test_data: Any, expect: dict[str, int]
) -> dict[str, int]:
    """Fail loudly if RecBole dropped / re-filtered anything. RecBole's counts include the padding id 0."""
    n_u, n_i, n_x = expect["users"], expect["items"], expect["interactions"]
    got = {
        "user_num": int(dataset.user_num),
        "item_num": int(dataset.item_num),
        "augmented_inters": int(dataset.inter_num),
        "train_instances": len(train_data._dataset),
        "valid_instances": len(valid_data._dataset),
        "test_instances": len(test_data._dataset),
    }
    want = {
        "user_num": n_u + 1,
        "item_num": n_i + 1,
        "augmented_inters": n_x - n_u,  # one (prefix -> next item) example per non-first interaction
        "train_instances": n_x - 3 * n_u,
        "valid_instances": n_u,
        "test_instances": n_u,
    }
    bad = {k: (got[k], want[k]) for k in want if got[k] != want[k]}
    if bad:
        raise RuntimeError(f"RecBole changed the data (got, expected): {bad}")
    return got


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", type=Path, default=Path("../shared/data"))
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/sasrec_beauty_recbole.json"))
    p.add_argument("--max-users", type=int, default=None, help="use only the first N users of Beauty.txt")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: leave as is)")
    p.add_argument("--train-batch-size", type=int, default=256)
    p.add_argument("--eval-batch-size", type=int, default=4096)
    p.add_argument("--lr", type=float, default=1e-3, help="RecBole default 0.001")
    p.add_argument(
        "--dropout", type=float, default=0.5, help="hidden and attention dropout (RecBole default 0.5)"
    )
    p.add_argument("--seed", type=int, default=2020)
    p.add_argument(
        "--keep-tmp", action="store_true", help="keep the temp dir (atomic file, RecBole log, checkpoint)"
    )
    args = p.parse_args(argv)

    t_start = time.perf_counter()
    command = (
        shlex.join([sys.executable, *sys.argv]) if argv is None else shlex.join(["recbole_sasrec.py", *argv])
    )
    beauty_txt = (args.data_root / "amazon_beauty_2014" / "Beauty.txt").resolve()
    out = args.out.resolve()
    if not beauty_txt.is_file():
        p.error(f"not found: {beauty_txt}")
    if args.threads:
        torch.set_num_threads(args.threads)

    _compat_patches()
    import recbole
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import get_model, get_trainer, init_logger, init_seed

    tmp = Path(tempfile.mkdtemp(prefix="recbole_sasrec_"))
    old_cwd = Path.cwd()
    try:
        expect = write_atomic_inter(beauty_txt, tmp / "beauty", args.max_users)
        if args.max_users is None and (expect["users"], expect["items"], expect["interactions"]) != (
            BEAUTY_USERS,
            BEAUTY_ITEMS,
            BEAUTY_INTERS,
        ):
            raise RuntimeError(f"unexpected Beauty.txt statistics: {expect}")
        os.chdir(tmp)  # RecBole writes ./log and ./log_tensorboard relative to the cwd

        config = Config(
            model="SASRec", dataset="beauty", config_dict=build_config_dict(args, tmp, tmp / "saved")
        )
        init_seed(config["seed"], config["reproducibility"])
        init_logger(config)
        import logging

        logger = logging.getLogger()
        logger.info(config)
        if str(config["device"]) != "cpu":
            raise RuntimeError(f"expected device cpu, got {config['device']}")

        t_data = time.perf_counter()
        dataset = create_dataset(config)
        logger.info(dataset)
        train_data, valid_data, test_data = data_preparation(config, dataset)
        data_s = time.perf_counter() - t_data
        counts = check_counts(dataset, train_data, valid_data, test_data, expect)
        logger.info(f"data checks passed: {counts} (from {expect})")

        init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
        model = get_model(config["model"])(config, train_data._dataset).to(config["device"])
        logger.info(model)
        trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)

        train_times: list[float] = []
        valid_times: list[float] = []

        def timed(fn: Any, sink: list[float]) -> Any:
            @functools.wraps(fn)
            def wrapper(*a: Any, **kw: Any) -> Any:
                t0 = time.perf_counter()
                try:
                    return fn(*a, **kw)
                finally:
                    sink.append(time.perf_counter() - t0)

            return wrapper

        trainer._train_epoch = timed(trainer._train_epoch, train_times)
        trainer._valid_epoch = timed(trainer._valid_epoch, valid_times)

        best_valid_score, best_valid = trainer.fit(train_data, valid_data, saved=True, show_progress=False)
        t_test = time.perf_counter()
        test_result = trainer.evaluate(test_data, load_best_model=True, show_progress=False)
        test_s = time.perf_counter() - t_test
        logger.info(f"test result: {dict(test_result)}")
        logger.info(
            f"train epoch seconds: {train_times}; valid seconds: {valid_times}; test eval {test_s:.2f}s"
        )
        for h in list(logger.handlers):  # release the log file before the temp dir goes
            h.flush()
    finally:
        os.chdir(old_cwd)
        if args.keep_tmp:
            print(f"kept temp dir: {tmp}", file=sys.stderr)
        else:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)

    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux
    wall_s = time.perf_counter() - t_start
    row = {
        "benchmark": "sasrec_beauty",
        "dataset": "beauty",
        "model": "sasrec-recbole",
        "metrics": {
            "recall@5": float(test_result["recall@5"]),
            "recall@10": float(test_result["recall@10"]),
            "ndcg@5": float(test_result["ndcg@5"]),
            "ndcg@10": float(test_result["ndcg@10"]),
            "s_per_epoch": sum(train_times) / len(train_times) if train_times else None,
            "epochs": len(train_times),
            "peak_rss_mb": round(peak_rss_mb, 1),
        },
        "wall_s": round(wall_s, 2),
        "command": command,
        "versions": {"recbole": recbole.__version__, "torch": torch.__version__, "numpy": np.__version__},
        "details": {
            "subset_users": args.max_users,
            "threads": torch.get_num_threads(),
            "epoch_train_s": [round(t, 3) for t in train_times],
            "epoch_valid_s": [round(t, 3) for t in valid_times],
            "test_eval_s": round(test_s, 3),
            "data_prep_s": round(data_s, 3),
            "best_valid_ndcg@10": float(best_valid_score),
            "best_valid": {k: float(v) for k, v in (best_valid or {}).items()},
            "data": {**expect, **counts},
            "batches_per_epoch": len(train_data),
            "config": {
                "hidden_size": 64,
                "n_layers": 2,
                "n_heads": 2,
                "inner_size": 256,
                "dropout": args.dropout,
                "max_len": 50,
                "loss": "CE (full softmax)",
                "train_batch_size": args.train_batch_size,
                "eval_batch_size": args.eval_batch_size,
                "optimizer": "adam",
                "lr": args.lr,
                "seed": args.seed,
                "protocol": "leave-one-out, full ranking, no history masking",
            },
        },
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_out = tempfile.mkstemp(dir=out.parent, prefix=out.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump([row], f, indent=2)
            f.write("\n")
        os.replace(tmp_out, out)
    except BaseException:
        Path(tmp_out).unlink(missing_ok=True)
        raise
    print(json.dumps(row["metrics"]), file=sys.stderr)
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
