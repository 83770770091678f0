"""Stage 4 end to end on a tiny random Qwen3: alignment → traces from a real OpenAI-compatible HTTP server (backed by
another tiny model) → SFT → two DAPO steps → evaluation."""

from __future__ import annotations

import json
import time

import httpx
import numpy as np
import pytest
import torch

pytest.importorskip("trl")
pytest.importorskip("peft")

from tests.llm import fixtures  # noqa: E402
from thinkrec.llm.model import LoraSettings, add_sid_tokens  # noqa: E402
from thinkrec.llm.server import OpenAICompatibleServer, hf_backend  # noqa: E402
from thinkrec.llm.stage import LLMStageConfig, TeacherSettings, run_llm_stage  # noqa: E402
from thinkrec.llm.teacher import OpenAITeacher  # noqa: E402
from thinkrec.llm.train import DAPOSettings, SFTSettings  # noqa: E402


def test_whole_stage_on_a_tiny_qwen3_with_an_http_teacher(tmp_path):
    t0 = time.perf_counter()
    cat = fixtures.catalogue()
    train, test = fixtures.lists(40, seed=1), fixtures.lists(20, seed=2)
    tok = fixtures.tokenizer(cat, train)
    student = fixtures.qwen3(len(tok), seed=0)
    teacher_tok = fixtures.tokenizer(cat, train)
    teacher_model = fixtures.qwen3(len(teacher_tok), seed=1)
    add_sid_tokens(teacher_model, teacher_tok, cat.radix)

    cfg = LLMStageConfig(
        model="tiny-qwen3", max_reasoning_tokens=6, n_history=3,
        lora=LoraSettings(r=4, alpha=8, target_modules=["q_proj", "v_proj"]),
        alignment=SFTSettings(steps=4, batch_size=4, lr=1e-3, max_len=256),
        teacher=TeacherSettings(kind="openai", model="tiny-teacher", max_tries=3),
        sampling=["target", "reject"], n_train_requests=16,
        sft=SFTSettings(steps=3, batch_size=2, lr=1e-3, max_len=384),
        rl=DAPOSettings(steps=2, prompts_per_step=1, num_generations=4, max_reasoning_tokens=6),
        n_eval=6, n_eval_alignment=3, eval_batch_size=3, n_valid=4, curve_every=2, rl_from="best",
    )
    with OpenAICompatibleServer(hf_backend(teacher_model, teacher_tok, 6), "tiny-teacher") as srv:
        assert httpx.get(srv.base_url + "/models").json()["data"][0]["id"] == "tiny-teacher"
        teacher = OpenAITeacher(srv.base_url, "tiny-teacher")
        summary = run_llm_stage(cat, train, test, [np.arange(10)], cfg, tmp_path / "llm", student, tok, teacher,
                                log=lambda *_: None, valid_lists=fixtures.lists(16, seed=3))

    m = summary["metrics"]
    assert set(m) == {"pre-rank", "alignment", "sft-target", "sft-reject", "rl"}  # an HTTP teacher has no scores
    assert m["pre-rank"]["changed_share"] == 0.0 and m["pre-rank"]["kendall_tau"] == 1.0
    for name, phase in m.items():  # every phase answered the validation lists too; the deployment rule read them
        assert phase["valid"]["n"] == 4 and len(phase["valid"]["ranks"]) == 4
        assert 0.0 <= phase["changed_share"] <= 1.0 and -1.0 <= phase["kendall_tau"] <= 1.0, name
    best = max(("alignment", "sft-target", "sft-reject", "rl"), key=lambda p: m[p]["valid"]["ndcg@5"])
    beat = m[best]["valid"]["ndcg@5"] > m["pre-rank"]["valid"]["ndcg@5"] + 1e-6
    assert summary["deploy"] == (best if beat else None) and summary["deploy_why"]
    for name in ("alignment", "sft-target", "sft-reject", "rl"):  # alignment (not a final phase): the first 3
        assert m[name]["n"] == (3 if name == "alignment" else 6) and m[name]["malformed"] == 0  # always valid
        assert 0.0 <= m[name]["ndcg@5"] <= 1.0
    # RL continued from the SFT model with the better validation N@5 (target on ties)
    better = "reject" if m["sft-reject"]["valid"]["ndcg@5"] > m["sft-target"]["valid"]["ndcg@5"] else "target"
    assert summary["rl_from"] == better
    # traces really came through the HTTP teacher, with provenance, and were cached
    for mode in ("target", "reject"):
        st = summary["traces"][mode]
        assert st["teacher"] == "openai:tiny-teacher" and st["tries"] >= st["accepted"] > 0
        assert st["tries_per_sample"] >= 1.0 and 0 < st["acceptance_rate"] <= 1
        rows = [json.loads(x) for x in (tmp_path / "llm" / f"traces_{mode}.jsonl").read_text().splitlines()]
        accepted = [r for r in rows if r["accepted"]]
        assert len(accepted) == st["accepted"]
        for r in accepted:  # an accepted trace ranks the true next item first and cites every candidate once
            user = int(r["request_id"].split(":")[-1])
            assert r["order"][0] == int(np.argmax(train.labels[user])) and sorted(r["order"]) == list(range(5))
    # learning curves: validation answers every 2 steps and at the last (SFT 3 steps, DAPO 2)
    curve = [r["step"] for r in summary["logs"]["sft"]["target"] if "curve/ndcg@5" in r]
    assert curve == [2, 3] and [r["step"] for r in summary["logs"]["rl"] if "curve/ndcg@5" in r] == [2]
    last = next(r for r in summary["logs"]["sft"]["target"] if r.get("step") == 3 and "curve/ndcg@5" in r)
    assert last["curve/ndcg@5"] == pytest.approx(m["sft-target"]["valid"]["ndcg@5"])  # the same model, same lists
    rl_steps = [r for r in summary["logs"]["rl"] if "loss" in r]
    assert len(rl_steps) == 2
    # no KL term, so the drift from the SFT start is logged per step (≥ 0, non-decreasing is not guaranteed)
    assert all(np.isfinite(r["drift"]) and r["drift"] >= 0 for r in rl_steps)
    assert all("dynamic_sampling/kept_group_frac" in r and "reward" in r for r in rl_steps)
    # the saved adapter (LoRA + trained SID rows, not the whole embedding) reloads onto the base model exactly
    from thinkrec.llm.model import load_adapter

    base_dir = tmp_path / "base"
    fixtures.qwen3(len(fixtures.tokenizer(cat, train)), seed=0).save_pretrained(base_dir)
    fixtures.tokenizer(cat, train).save_pretrained(base_dir)
    reloaded, tok2 = load_adapter(str(base_dir), tmp_path / "llm" / "adapter", cat.radix)
    assert tok2.convert_tokens_to_ids("<|sid_end|>") == tok.convert_tokens_to_ids("<|sid_end|>")
    ids = tok(["Candidates: <|sid_begin|><s_a_1><s_b_2><s_c_0><|sid_end|>"], return_tensors="pt")
    student.eval()
    with torch.no_grad():
        assert torch.allclose(student(**ids).logits, reloaded(**ids).logits, atol=1e-5)
    assert sum(f.stat().st_size for f in (tmp_path / "llm" / "adapter").iterdir()) < 2e6
    assert time.perf_counter() - t0 < 120
