"""The serving API's request and response bodies (pydantic; they are the OpenAPI schema at ``/docs``)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

MAX_HISTORY = 2000  # items in a given history; longer bodies are a client's mistake (models read ≤ max_len anyway)
MAX_BATCH = 1000  # requests in one /v1/recommend/batch call


class RecommendRequest(BaseModel):
    """One user's request: ``user`` (an original user id: that user's known history) or ``history`` (original item
    ids, oldest first; an empty list is served from the cold-start fallback, popularity)."""

    model_config = ConfigDict(extra="forbid")

    user: str | int | None = Field(None, description="Original user id of the dataset.")
    history: list[str | int] | None = Field(None, max_length=MAX_HISTORY,
                                            description="Original item ids, oldest first (instead of `user`).")
    k: int = Field(10, description="How many items (1 ≤ k ≤ the funnel's list length, see /v1/info).")
    exclude_seen: bool | None = Field(None, description="Drop items of the history (default: the run's seen-item "
                                      "policy, the one its evaluation used; GET /v1/info shows it).")
    explain: bool = Field(False, description="S²GR thinking tokens' clusters, EGLR entropy and reasoning steps.")
    retriever: str | None = Field(None, description="Serve another trained retriever (e.g. `sasrec`, `s2gr`, `merged`).")
    rerank: bool = Field(True, description="False: the retriever's (or merged candidates') order, no re-ranker.")
    reranker: str | None = Field(None, description="Use another trained re-ranker (e.g. `eglr`) instead of the funnel's.")
    as_of: Literal["test", "valid"] | None = Field(None, description="With `user`: the history evaluation saw.")

    @model_validator(mode="after")
    def _one_of(self) -> RecommendRequest:
        if (self.user is None) == (self.history is None):
            raise ValueError("give exactly one of `user` or `history`")
        if self.as_of is not None and self.user is None:
            raise ValueError("`as_of` applies to `user`, not to `history`")
        return self


class BatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    requests: list[RecommendRequest] = Field(..., min_length=1, max_length=MAX_BATCH)


class Item(BaseModel):
    item_id: str
    title: str
    score: float | None = None
    sid: str | None = None
    ranks: dict[str, int] = Field(default_factory=dict, description="1-based rank at each stage.")
    explanation: dict[str, Any] | None = None


class HistoryItem(BaseModel):
    item_id: str
    title: str


class Recommendation(BaseModel):
    user: str | None
    history: list[HistoryItem]
    items: list[Item]
    stages: dict[str, str | None]
    cold_start: bool = Field(False, description="Empty history: served from the popularity fallback.")
    explanation: dict[str, Any] | None = None


class BatchResponse(BaseModel):
    results: list[Recommendation]


class ItemDetail(BaseModel):
    item_id: str
    title: str
    categories: list[str] | None = None
    sid: str | None = None
    interactions: int


class ItemList(BaseModel):
    items: list[ItemDetail]
    total: int


class UserHistory(BaseModel):
    user: str
    history: list[HistoryItem]


class UserList(BaseModel):
    users: list[str]
    total: int


class Info(BaseModel):
    run: str
    dataset: str
    n_users: int
    n_items: int
    stages: dict[str, Any]
    retrievers: list[str]
    rerankers: list[str]
    max_k: int
    batching: dict[str, Any]
    seen: dict[str, Any] = Field(description="The run's seen-item policy: policy, exclude, repeat_share, threshold, why.")
    generation: str | None = Field(None, description="The published generation of the run directory served "
                                   "(generations/<n>; None: a directory never published, read as it is).")
