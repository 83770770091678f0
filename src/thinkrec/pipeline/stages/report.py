"""The always-run report: ``report.md`` and ``report.html`` from what the run directory holds."""

from __future__ import annotations

from thinkrec.pipeline.context import Context
from thinkrec.utils.io import read_json


def run_report(ctx: Context) -> None:
    from thinkrec.pipeline.report import write_report
    from thinkrec.pipeline.report_html import write_html_report

    # timings.json is written when the invocation ends: the reports show it with this invocation's stages so far
    path = ctx.root / "timings.json"
    timings = {**(read_json(path) if path.exists() else {}), **ctx.timings}
    write_report(ctx.root, ctx.config, timings)
    html = write_html_report(ctx.root, ctx.config, timings)
    ctx.log(f"report: {ctx.root / 'report.md'}, {html}")
