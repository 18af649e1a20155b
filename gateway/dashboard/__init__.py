"""The admin dashboard's web assets: Jinja2 templates and static files (the vendored uPlot among them),
shipped as package data and served by ``gateway.api.dashboard``. No CDN: everything is local."""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"
