"""Reports: a small HTML + Markdown report writer and the plots veil draws."""

from veil.reports.report import Report

__all__ = ["Report"]
