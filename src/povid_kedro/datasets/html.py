"""An HTML page on disk that kedro viz previews as rendered HTML."""

from __future__ import annotations

from kedro_datasets._typing import HTMLPreview
from kedro_datasets.text import TextDataset


class HTMLDataset(TextDataset):
    """``text.TextDataset`` for an HTML document, with kedro viz's HTML preview."""

    def preview(self) -> HTMLPreview:
        """The whole page (kedro viz renders it in its side panel)."""
        return HTMLPreview(self.load())
