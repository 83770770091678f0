"""Stage 4 (GR2): an LLM re-ranker over Semantic-ID tokens. So far: SID token strings and the RL rewards."""

from thinkrec.llm.rewards import RankedOutput, parse_output, rank_reward, rerank_reward
from thinkrec.llm.sid_tokens import SID_BEGIN, SID_END, format_sid, parse_sids, sid_vocabulary

__all__ = ["SID_BEGIN", "SID_END", "RankedOutput", "format_sid", "parse_output", "parse_sids", "rank_reward",
           "rerank_reward", "sid_vocabulary"]
