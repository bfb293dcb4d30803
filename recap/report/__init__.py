"""Reports of evaluation records: metrics table, plots and transcripts (markdown and self-contained HTML)."""

from recap.report.report import summarize, write_report

__all__ = ["summarize", "write_report"]
