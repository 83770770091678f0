"""What a shorter GR2 prompt buys on CPU: prompt length, SFT step time and constrained-answer speed of Gemma 3 270M
for several prompt styles, measured before spending a long run on them (issue: "measure that first").

    python benchmarks/llm_prompt_cost.py [--styles current,ranked,short,sid-only] [--timed current,short]

Items are Beauty's real titles (``--data-root``) with random 3 × 256 + dedup SID codes (the token count of a SID does
not depend on which codes it has); histories and the 10 candidates are random items, the answers random permutations
with a fixed ≈ 40-word reasoning (the teacher's length). Token counts are exact for every style; the timed styles
also run LoRA SFT at batch 4 (3 steps minus 1 step, halved: a steady step) and one batch of 16 greedy constrained answers.
Writes benchmarks/results/llm_prompt_cost.json (dataset ``beauty``, model = the style).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import peak_rss_mb, row, save_rows  # noqa: E402
from thinkrec.data.registry import load_dataset  # noqa: E402
from thinkrec.llm.answer import AnswerTokens, render_answer  # noqa: E402
from thinkrec.llm.model import LoraSettings, add_sid_tokens, apply_lora, load_causal_lm  # noqa: E402
from thinkrec.llm.prompts import Catalogue, rerank_prompt  # noqa: E402
from thinkrec.llm.teacher import generate_answers  # noqa: E402
from thinkrec.llm.train import SFTSettings, sft_features, train_lm  # noqa: E402

STYLES = {  # n_history, with_titles, title_words, ranked
    "current": (5, True, 8, False),  # the prompt of the published CPU run
    "ranked": (5, True, 8, True),
    "short": (3, True, 4, True),
    "sid-only": (3, False, 8, True),
}
REASONING = ("Recent purchases: cleansers and hair treatments; the first candidate shares the brand of the last "
             "item and follows it often in other baskets, the second matches the category, the others are "
             "popular but unrelated to the history.")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--styles", default=",".join(STYLES))
    p.add_argument("--timed", default="current,short", help="styles whose SFT steps and answers are timed")
    p.add_argument("--data-root", default=None)
    p.add_argument("--lists", type=int, default=64, help="requests whose prompt lengths are counted")
    args = p.parse_args()
    ds = load_dataset("beauty", args.data_root)
    rng = np.random.default_rng(0)
    n = len(ds.items)
    codes = np.concatenate([rng.integers(0, 256, (n, 3)), rng.integers(0, 4, (n, 1))], 1)
    cat = Catalogue.from_dataset(ds, codes)
    reqs = [(rng.integers(0, n, 8).tolist(), rng.integers(0, n, 10).tolist()) for _ in range(args.lists)]
    t = time.perf_counter()
    model, tok = load_causal_lm("gemma3-270m", "cpu", "float32")
    load_s = time.perf_counter() - t
    new_ids = add_sid_tokens(model, tok, cat.radix)
    model = apply_lora(model, LoraSettings(), new_ids)
    tokens = AnswerTokens(tok)
    rows = []
    for style in args.styles.split(","):
        n_hist, titles, words, ranked = STYLES[style]
        prompts = {str(k): rerank_prompt(cat, h, c, n_hist, titles, ranked=ranked, title_words=words)
                   for k, (h, c) in enumerate(reqs)}
        prompt_tokens = [len(tok(pr)["input_ids"]) for pr in prompts.values()]
        orders = {k: rng.permutation(10).tolist() for k in prompts}
        answer_tokens = [len(tok(render_answer(REASONING, [cat.sid_tuple(reqs[int(k)][1][i]) for i in o]))["input_ids"])
                         for k, o in orders.items()]
        metrics = {"prompt_tokens": round(float(np.mean(prompt_tokens)), 1),
                   "answer_tokens": round(float(np.mean(answer_tokens)), 1)}
        if style in args.timed.split(","):
            sids = {k: [cat.sid_tuple(i) for i in reqs[int(k)][1]] for k in prompts}
            traces = [{"request_id": f"train:{k}", "order": o, "reasoning": REASONING} for k, o in orders.items()]
            feats = sft_features(tokens, traces[:12], prompts, sids, SFTSettings(max_len=1024))
            walls = []
            for steps in (1, 3):  # the difference is two steady steps (the first carries the Trainer's set-up)
                settings = SFTSettings(steps=steps, batch_size=4, lr=1e-4, max_len=1024)
                with tempfile.TemporaryDirectory() as tmp:
                    t = time.perf_counter()
                    train_lm(model, tok, feats, settings, tmp, "cpu", False, lambda *_: None)
                    walls.append(time.perf_counter() - t)
            train_lm_s = [(walls[1] - walls[0]) / 2]
            metrics["sft_step_s"] = round(float(np.mean(train_lm_s)), 2)
            model.eval()
            batch = list(prompts.values())[:16]
            t = time.perf_counter()
            generate_answers(model, tokens, batch, 1, 0.0, 48, 10, codes.shape[1])
            metrics["answer_lists_per_s"] = round(len(batch) / (time.perf_counter() - t), 3)
            model.train()
        metrics["peak_rss_mb"] = round(peak_rss_mb(), 1)
        print(style, metrics, flush=True)
        rows.append(row("llm_prompt_cost", "beauty", style, metrics, load_s, n_history=n_hist, with_titles=titles,
                        title_words=words, ranked=ranked))
    save_rows("llm_prompt_cost", rows)


if __name__ == "__main__":
    main()
