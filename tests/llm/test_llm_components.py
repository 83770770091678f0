"""Stage 4 pieces: answer tokens, constrained decoding, the weighted SFT loss, teachers and their trace cache, the
OpenAI-compatible server, dynamic sampling, alignment data."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("transformers")

from tests.llm import fixtures  # noqa: E402
from thinkrec.llm.answer import (  # noqa: E402
    AnswerTokens,
    clean_reasoning,
    constrained_generate,
    prompt_candidates,
    render_answer,
)
from thinkrec.llm.model import add_sid_tokens  # noqa: E402
from thinkrec.llm.prompts import alignment_examples, rerank_prompt  # noqa: E402
from thinkrec.llm.rewards import parse_output, rerank_reward  # noqa: E402
from thinkrec.llm.server import OpenAICompatibleServer, hf_backend  # noqa: E402
from thinkrec.llm.teacher import (  # noqa: E402
    HFTeacher,
    OpenAITeacher,
    ProgrammaticTeacher,
    generate_answers,
    requests_from_lists,
    sample_traces,
)
from thinkrec.llm.train import (  # noqa: E402
    LeftPadCollator,
    drop_uninformative_groups,
    reward_function,
    tokenize_example,
    weighted_lm_loss,
)


@pytest.fixture(scope="module")
def tiny():
    cat = fixtures.catalogue()
    train = fixtures.lists(30, seed=1)
    tok = fixtures.tokenizer(cat, train)
    model = fixtures.qwen3(len(tok), seed=0)
    add_sid_tokens(model, tok, cat.radix)
    return cat, train, tok, model.eval()


def test_answer_tokens_match_the_canonical_text_and_split_reasoning_from_output(tiny):
    cat, _, tok, _ = tiny
    tokens = AnswerTokens(tok)
    ranking = [cat.sid_tuple(i) for i in (3, 17, 5)]
    reasoning = 'Top pick: "rose" lipstick,\nsame\\category.'
    ids, is_reasoning = tokens.answer_ids(reasoning, ranking)
    assert ids[-1] == tok.eos_token_id
    assert tok.decode(ids[:-1]) == render_answer(reasoning, ranking)
    assert tok.decode([i for i, r in zip(ids, is_reasoning, strict=True) if r]) == clean_reasoning(reasoning)
    assert parse_output(render_answer(reasoning, ranking), ranking) == [0, 1, 2]
    assert json.loads(render_answer(reasoning, ranking))["reasoning"] == "Top pick: rose lipstick, same category."


def test_constrained_sampling_always_yields_a_permutation_of_the_prompt_candidates(tiny):
    cat, train, tok, model = tiny
    tokens = AnswerTokens(tok)
    torch.manual_seed(0)
    prompts = [rerank_prompt(cat, (train.history[n] - 1).tolist(), train.items[n].tolist()) for n in range(4)]
    answers = generate_answers(model, tokens, prompts, 4, 2.0, 5, 5, 3)  # hot sampling from a random model
    for n, group in enumerate(answers):
        cands = [cat.sid_tuple(i) for i in train.items[n]]
        assert prompt_candidates(prompts[n]) == cands
        for text in group:
            order = parse_output(text, cands)
            assert order is not None and sorted(order) == list(range(5)), text
    # the reasoning never runs past its cap: count the tokens between the opening and the end-of-reasoning token
    enc = tok(prompts, return_tensors="pt", padding=True)
    out = constrained_generate(model, tokens, 5)(**enc, do_sample=True, temperature=2.0, top_k=0, max_new_tokens=80,
                                                 pad_token_id=tok.pad_token_id)
    for row in out[:, enc["input_ids"].shape[1]:].tolist():
        start = len(tokens.reasoning_open)
        assert row[:start] == tokens.reasoning_open
        assert row.index(tokens.ranking_open[0], start) - start <= 5


def test_greedy_decoding_with_the_head_only_where_there_is_a_choice_equals_generate(tiny):
    """The fast greedy path gives generate's answers token for token: a LoRA model with non-zero adapters and
    trained SID rows (so merging matters), prompts of different lengths (left padding), a row without candidates
    (unconstrained), and reasoning caps from none to long enough to end on its own."""
    import copy

    from thinkrec.llm.answer import greedy_constrained, max_answer_tokens
    from thinkrec.llm.model import LoraSettings, apply_lora

    cat, train, tok, base = tiny
    new_ids = add_sid_tokens(base, tok, cat.radix)
    model = apply_lora(copy.deepcopy(base), LoraSettings(r=4, alpha=8), new_ids)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:  # LoRA A/B and the trainable SID rows: move them off their initial values
                p.add_(torch.randn_like(p) * 0.5)
    model.eval()
    tokens = AnswerTokens(tok)
    prompts = [rerank_prompt(cat, (train.history[n] - 1).tolist()[: 1 + n % 4], train.items[n].tolist())
               for n in range(5)] + ["Item list without candidates:"]
    enc = tok(prompts, return_tensors="pt", padding=True)
    for cap in (0, 3, 40):
        max_new = max_answer_tokens(tokens, 5, 3, cap)
        slow = constrained_generate(model, tokens, cap)(**enc, do_sample=False, max_new_tokens=max_new,
                                                        pad_token_id=tok.pad_token_id)[:, enc["input_ids"].shape[1]:]
        fast = greedy_constrained(model, tokens, enc["input_ids"], enc["attention_mask"], max_new, cap)
        assert fast.tolist() == slow[:, : fast.shape[1]].tolist()
        assert (slow[:, fast.shape[1]:] == tok.pad_token_id).all()  # generate only padded on after every EOS
        for n in range(5):  # and the constrained rows are permutations of their candidates
            cands = [cat.sid_tuple(i) for i in train.items[n]]
            order = parse_output(tok.decode(fast[n], skip_special_tokens=True), cands)
            assert order is not None and sorted(order) == list(range(5))


def test_weighted_loss_equals_an_independent_per_token_computation(tiny):
    _, _, tok, model = tiny
    a = tokenize_example(tok, "Item one is", [10, 11, 12, 2], [0.5, 0.5, 1.0, 1.0], 64)
    b = tokenize_example(tok, "A much longer prompt for the second", [20, 21, 2], [1.0, 0.25, 1.0], 64)
    batch = LeftPadCollator(tok.pad_token_id)([a, b])
    with torch.no_grad():
        got = weighted_lm_loss(model, batch)
        total, n = 0.0, 0
        for ex in (a, b):  # unpadded, full logits, plain cross-entropy
            ids = torch.tensor([ex["input_ids"]])
            logits = model(input_ids=ids).logits[0, :-1]
            ce = F.cross_entropy(logits, ids[0, 1:], reduction="none")
            lab = torch.tensor(ex["labels"][1:]) != -100
            total += (ce[lab] * torch.tensor(ex["loss_weights"][1:])[lab]).sum()
            n += int(lab.sum())
    assert got.item() == pytest.approx(float(total) / n, rel=1e-4)


def test_programmatic_teacher_target_and_reject_sampling_with_a_resumable_cache(tiny, tmp_path):
    cat, train, _, _ = tiny
    teacher = ProgrammaticTeacher.fit(cat, train)
    assert teacher.weights[3] > 0.5  # learned the planted transition signal
    reqs = requests_from_lists(train, "train:")
    with_target = sum(r.target >= 0 for r in reqs)
    traces, st = sample_traces(teacher, cat, reqs, "target", tmp_path / "t.jsonl", max_tries=3)
    assert st.accepted == with_target and st.tries_per_sample == 1.0 and st.skipped_no_target == len(reqs) - with_target
    for tr in traces:
        req = next(r for r in reqs if f"target:{r.request_id}" == tr["request_id"])
        assert tr["order"][0] == req.target and tr["teacher"] == "programmatic"
        assert "Top pick: " + cat.title(req.candidates[req.target], 6) in tr["reasoning"]
    traces_r, st_r = sample_traces(teacher, cat, reqs, "reject", tmp_path / "r.jsonl", max_tries=1, temperature=0.5)
    assert 0 < st_r.accepted < with_target and st_r.tries == st_r.requests - st_r.skipped_no_target
    assert all(tr["order"][0] == next(r for r in reqs if f"reject:{r.request_id}" == tr["request_id"]).target
               for tr in traces_r)
    # a second run reads the cache; a line cut by a kill is sampled again
    lines = (tmp_path / "t.jsonl").read_text().splitlines()
    (tmp_path / "t.jsonl").write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:20])
    again, st2 = sample_traces(teacher, cat, reqs, "target", tmp_path / "t.jsonl", max_tries=3)
    assert st2.cached == with_target - 1 and st2.tries == 1 and len(again) == with_target
    # another teacher (or another prompt) does not reuse the cache
    other = ProgrammaticTeacher(cat, teacher.weights, teacher.bias)
    other.name = "programmatic-v2"
    _, st3 = sample_traces(other, cat, reqs, "target", tmp_path / "t.jsonl", max_tries=3)
    assert st3.cached == 0 and st3.accepted == with_target
    _, st4 = sample_traces(other, cat, reqs, "target", tmp_path / "t.jsonl", max_tries=3, n_history=2)
    assert st4.cached == 0


def test_openai_compatible_server_round_trip_and_errors(tiny):
    cat, train, tok, model = tiny
    prompt = rerank_prompt(cat, [1, 2], train.items[0].tolist())
    cands = [cat.sid_tuple(i) for i in train.items[0]]
    with OpenAICompatibleServer(hf_backend(model, tok, 4), "tiny") as srv:
        r = httpx.post(srv.base_url + "/chat/completions",
                       json={"model": "tiny", "n": 3, "temperature": 1.0,
                             "messages": [{"role": "user", "content": prompt}]})
        choices = r.json()["choices"]
        assert r.status_code == 200 and len(choices) == 3
        assert all(parse_output(c["message"]["content"], cands) is not None for c in choices)
        assert httpx.post(srv.base_url + "/chat/completions", content=b"{not json").status_code == 400
        assert httpx.get(srv.base_url + "/nothing").status_code == 404
        teacher = OpenAITeacher(srv.base_url, "tiny")
        req = requests_from_lists(train)[0]
        assert len(teacher.answer(req, prompt, 2, 1.0)) == 2
    # the local-HF teacher gives the same kind of answers without HTTP
    assert parse_output(HFTeacher(model, tok, "tiny", 4).answer(req, prompt, 1, 1.0)[0], cands) is not None


def test_dynamic_sampling_drops_groups_whose_rewards_are_all_equal():
    adv = torch.tensor([0.0, 0.0, 0.0, 0.7, -0.7, 0.0, 0.0, 0.0, 0.0])
    mask = torch.ones(9, 5, dtype=torch.long)
    new, kept = drop_uninformative_groups(adv, mask, 3)
    assert new[:, 0].tolist() == [0, 0, 0, 1, 1, 1, 0, 0, 0] and kept == pytest.approx(1 / 3)
    with pytest.raises(ValueError):
        drop_uninformative_groups(adv[:8], mask[:8], 3)


def test_trl_reward_reads_candidates_from_the_prompt(tiny):
    cat, train, _, _ = tiny
    items = train.items[0].tolist()
    prompt = rerank_prompt(cat, [1], items)
    cands = [cat.sid_tuple(i) for i in items]
    moved = render_answer("x", [cands[i] for i in (3, 0, 1, 2, 4)])
    copied = render_answer("x", cands)
    got = reward_function(0.1)([prompt, prompt, prompt], [moved, copied, "no json"], [3, 3, 3])
    assert got == pytest.approx([3 / 5 + 0.1, 0.0, 0.0])
    assert got[0] == pytest.approx(rerank_reward(moved, cands, 3, 0.1))


def test_alignment_examples_cover_every_task_and_use_training_sequences_only(tiny):
    cat = tiny[0]
    seqs = [np.array([1, 2, 3, 4]), np.array([5, 6, 7])]
    ex = alignment_examples(cat, seqs, 400, seed=0, plain_text_share=0.1)
    kinds = {e["prompt"].split(" ")[0].split(":")[0] for e in ex}
    assert kinds == {"Product", "Item", "Title", "History"}
    for e in ex:
        if e["prompt"].startswith("History"):
            (nxt,) = [s for s in [prompt_candidates("Candidates:" + e["completion"])[0]]]
            assert nxt in {cat.sid_tuple(i) for i in (2, 3, 4, 6, 7)}
    assert 0.05 < np.mean([e["prompt"] == "Product:" for e in ex]) < 0.15


def test_stage_configuration_errors_name_the_field(tiny, tmp_path):
    from thinkrec.llm.stage import LLMStageConfig, run_llm_stage

    cat, train, _, _ = tiny
    with pytest.raises(ValueError, match="llm.rl_from"):
        run_llm_stage(cat, train, train, [], LLMStageConfig(sampling=["reject"], rl_from="target"), tmp_path)
    with pytest.raises(ValueError, match="llm.sampling"):
        run_llm_stage(cat, train, train, [], LLMStageConfig(sampling=["best"]), tmp_path)


def test_teacher_registry_builds_each_kind_and_names_the_field(tiny, tmp_path):
    from thinkrec.llm.stage import LLMStageConfig, TeacherSettings, make_teacher
    from thinkrec.llm.teacher import TEACHERS

    cat, train, _, _ = tiny
    assert TEACHERS.names() == ("programmatic", "openai", "hf")
    assert all(e.description and "\n" not in e.description for e in TEACHERS.entries())
    assert isinstance(make_teacher(LLMStageConfig(), cat, train), ProgrammaticTeacher)
    t = make_teacher(LLMStageConfig(teacher=TeacherSettings(kind="openai", model="m")), cat, train)
    assert isinstance(t, OpenAITeacher) and t.name == "openai:m"
    with pytest.raises(ValueError, match="llm.teacher.model"):
        make_teacher(LLMStageConfig(teacher=TeacherSettings(kind="openai")), cat, train)
    with pytest.raises(ValueError, match="llm.teacher.model"):
        make_teacher(LLMStageConfig(teacher=TeacherSettings(kind="hf")), cat, train)
    fixtures.qwen3(len(fixtures.tokenizer(cat, train)), seed=0).save_pretrained(tmp_path / "hf-teacher")
    fixtures.tokenizer(cat, train).save_pretrained(tmp_path / "hf-teacher")
    t = make_teacher(LLMStageConfig(teacher=TeacherSettings(kind="hf", model=str(tmp_path / "hf-teacher"))), cat, train)
    assert isinstance(t, HFTeacher) and t.name == "hf:hf-teacher" and t.model.device == torch.device("cpu")
    with pytest.raises(ValueError, match=r"llm.teacher.kind: unknown teacher 'gpt'; known: programmatic, openai, hf"):
        make_teacher(LLMStageConfig(teacher=TeacherSettings(kind="gpt")), cat, train)


def test_trainer_is_pinned_to_the_stage_device(tmp_path):
    from transformers import TrainingArguments

    from thinkrec.llm.train import pin_device

    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=False, report_to=[])
    pin_device(args, "cpu")
    assert args.device == torch.device("cpu") and args.n_gpu == 0
    if torch.cuda.is_available():
        args = TrainingArguments(output_dir=str(tmp_path), report_to=[])
        pin_device(args, "cuda")
        assert args.device == torch.device("cuda", torch.cuda.current_device()) and args.n_gpu == 1


def test_order_change_counts_moved_lists_and_kendall_tau_to_the_input():
    from thinkrec.llm.stage import order_change

    # [1, 0, 2]: pairs (0,1) discordant, (0,2) (1,2) concordant → τ = (2 − 1) / 3; [2, 1, 0]: τ = −1
    out = order_change([[0, 1, 2], [1, 0, 2], [2, 1, 0]])
    assert out["changed_share"] == pytest.approx(2 / 3)
    assert out["kendall_tau"] == pytest.approx((1 + 1 / 3 - 1) / 3)
    assert order_change([[0, 1, 2, 3]]) == {"changed_share": 0.0, "kendall_tau": 1.0}


def test_ranked_prompt_numbers_the_candidates_in_pre_rank_order():
    from thinkrec.llm.answer import prompt_candidates
    from thinkrec.llm.prompts import RANKED_NOTE

    cat = fixtures.catalogue()
    items = [4, 2, 7]
    plain = rerank_prompt(cat, [1], items)
    ranked = rerank_prompt(cat, [1], items, ranked=True, title_words=2)
    assert RANKED_NOTE in ranked and RANKED_NOTE not in plain
    lines = ranked.split("Candidates:")[1].splitlines()[1:4]
    assert lines == [f"{k}. {cat.describe(i, True, 2)}" for k, i in enumerate(items, 1)]
    want = [cat.sid_tuple(i) for i in items]
    assert prompt_candidates(ranked) == want == prompt_candidates(plain)  # the constrained decoder reads the same


def test_the_llm_order_is_deployed_only_where_it_beat_its_input_on_validation():
    from thinkrec.llm.stage import choose_deployment

    def res(pre, **phases):
        return {"pre-rank": {"valid": {"ndcg@5": pre, "n": 64}},
                **{k.replace("_", "-"): {"valid": {"ndcg@5": v}} for k, v in phases.items()}}

    phases = ["alignment", "sft-target", "rl"]
    assert choose_deployment(res(0.40, alignment=0.30, sft_target=0.42, rl=0.41), phases)[0] == "sft-target"
    chosen, why = choose_deployment(res(0.40, alignment=0.30, sft_target=0.40, rl=0.39), phases)
    assert chosen is None and "keeps its input order" in why  # a tie keeps the input
    assert choose_deployment({"pre-rank": {}}, phases)[0] is None  # not validated: never used


def test_the_teacher_ceiling_scores_its_own_greedy_ranking():
    from thinkrec.llm.stage import teacher_metrics
    from thinkrec.llm.teacher import ProgrammaticTeacher, requests_from_lists

    cat = fixtures.catalogue()
    train = fixtures.lists(30, seed=1)
    teacher = ProgrammaticTeacher.fit(cat, train, seed=0)
    reqs = [r for r in requests_from_lists(fixtures.lists(12, seed=2)) if r.target >= 0]
    m = teacher_metrics(teacher, reqs)
    first = [int(np.argmax(teacher.scores(r))) == r.target for r in reqs]
    assert m["recall@1"] == pytest.approx(np.mean(first)) and m["n"] == len(reqs)


def test_a_keep_order_teacher_promotes_one_candidate_and_keeps_the_rest_in_input_order(tmp_path):
    """``teacher.keep_order``: every trace (target and reject sampling) and the greedy ceiling are the input order
    with one candidate moved to the top — the target under target sampling, the teacher's pick otherwise."""
    from thinkrec.llm.stage import teacher_metrics
    from thinkrec.llm.teacher import ProgrammaticTeacher, requests_from_lists

    cat = fixtures.catalogue()
    train = fixtures.lists(30, seed=1)
    teacher = ProgrammaticTeacher.fit(cat, train, seed=0, keep_order=True)
    assert teacher.name != ProgrammaticTeacher.fit(cat, train, seed=0).name  # separate trace caches
    reqs = [r for r in requests_from_lists(fixtures.lists(20, seed=2)) if r.target >= 0]

    def minimal_edit(order, n):
        return order == [order[0]] + [i for i in range(n) if i != order[0]]

    for mode in ("target", "reject"):
        traces, stats = sample_traces(teacher, cat, reqs, mode, tmp_path / f"{mode}.jsonl", 8, 2.0)
        assert stats.accepted == len(traces) > 0
        by_id = {f"{mode}:{r.request_id}": r for r in reqs}
        for t in traces:
            r = by_id[t["request_id"]]
            assert t["order"][0] == r.target and minimal_edit(t["order"], len(r.candidates))
    m = teacher_metrics(teacher, reqs)
    top = [int(np.argmax(teacher.scores(r))) for r in reqs]
    moved = [t != 0 for t in top]  # the greedy order differs from the input exactly when the pick is not first
    assert m["changed_share"] == pytest.approx(np.mean(moved))
    assert m["recall@1"] == pytest.approx(np.mean([t == r.target for t, r in zip(top, reqs, strict=True)]))
