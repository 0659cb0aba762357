"""Rendering a run's report: figures (``plots``), report.md (``markdown``) and the self-contained report.html
(``html``); ``build`` puts them together from a run folder."""
