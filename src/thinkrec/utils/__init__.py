"""Shared utilities (no dependency on any funnel stage)."""
