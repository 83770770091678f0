"""GR2 rewards on hand cases, and SID tokens."""

from __future__ import annotations

import json

import pytest

from thinkrec.llm import format_sid, parse_output, parse_sids, rank_reward, rerank_reward, sid_vocabulary

CANDS = [(1, 2, 0), (3, 4, 0), (5, 6, 1), (7, 8, 0)]  # pre-ranked order; the true item is index 2 (rank 3)


def _answer(order, reasoning="shared brand with the last purchase"):
    return json.dumps({"reasoning": reasoning, "ranking": [format_sid(CANDS[i]) for i in order]})


def test_sid_tokens_round_trip():
    vocab = sid_vocabulary([4, 3])
    assert vocab[:2] == ["<|sid_begin|>", "<|sid_end|>"] and len(vocab) == 2 + 4 + 3 and "<s_b_2>" in vocab
    text = "x " + format_sid((5, 6, 1)) + " y " + format_sid((7, 8, 0))
    assert format_sid((5, 6, 1)) == "<|sid_begin|><s_a_5><s_b_6><s_c_1><|sid_end|>"
    assert parse_sids(text) == [(5, 6, 1), (7, 8, 0)]
    assert parse_sids("<|sid_begin|><s_b_1><s_a_2><|sid_end|>") == []  # levels out of order


def test_moving_the_true_item_up_earns_exactly_the_rank_gain_plus_format():
    assert rank_reward(3, 1, 4) == pytest.approx(0.5)
    assert rerank_reward(_answer([2, 0, 1, 3]), CANDS, 2, format_weight=0.1) == pytest.approx(2 / 4 + 0.1)
    assert rerank_reward(_answer([0, 2, 1, 3]), CANDS, 2, format_weight=0.1) == pytest.approx(1 / 4 + 0.1)


def test_copying_the_input_order_earns_no_format_bonus():
    assert rerank_reward(_answer([0, 1, 2, 3]), CANDS, 2) == 0.0
    # ... unless the true item already was first: keeping it there is the best answer
    assert rerank_reward(_answer([0, 1, 2, 3]), CANDS, 0, format_weight=0.1) == pytest.approx(0.1)


def test_moving_the_true_item_down_is_penalised_without_bonus():
    assert rerank_reward(_answer([0, 1, 3, 2]), CANDS, 2, format_weight=0.1) == pytest.approx(-1 / 4)


@pytest.mark.parametrize("text", [
    "I think the answer is the eyeliner.",  # no JSON
    '{"reasoning": "x", "ranking": ["<|sid_begin|><s_a_5><s_b_6><s_c_1><|sid_end|>"]}',  # not every candidate
    json.dumps({"reasoning": "x", "ranking": [format_sid(c) for c in [CANDS[2], CANDS[2], CANDS[0], CANDS[1]]]}),  # repeat
    json.dumps({"reasoning": "x", "ranking": [format_sid(c) for c in [(9, 9, 9), CANDS[0], CANDS[1], CANDS[3]]]}),  # invented
    json.dumps({"ranking": [format_sid(c) for c in CANDS]}),  # no reasoning field
    '{"reasoning": "x", "ranking": [',  # truncated
])
def test_a_malformed_output_earns_no_reward(text):
    assert parse_output(text, CANDS) is None
    assert rerank_reward(text, CANDS, 2) == 0.0


def test_answer_inside_prose_parses_and_missing_target_earns_nothing():
    text = "Reasoning first.\n" + _answer([2, 0, 1, 3]) + "\nDone."
    assert parse_output(text, CANDS) == [2, 0, 1, 3]
    assert rerank_reward(text, CANDS, -1) == 0.0
    with pytest.raises(ValueError):
        rank_reward(0, 1, 4)
