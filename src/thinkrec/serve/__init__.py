"""Serving a trained funnel over HTTP: ``thinkrec serve --run DIR`` (FastAPI + uvicorn, micro-batched)."""

from thinkrec.serve.app import ServeConfig, create_app, serve
from thinkrec.serve.batcher import BatcherConfig, MicroBatcher, Overloaded

__all__ = ["BatcherConfig", "MicroBatcher", "Overloaded", "ServeConfig", "create_app", "serve"]
