"""The explorer: `charlm inspect-neurons --html` writes one self-contained page to look inside a model.

page.py gathers the data and writes the file; page.html, page.css and page.js are the page
itself and model.js its forward pass, package data inlined into every page (weights.py puts
the model in it).
"""

from .page import DEFAULT_CHARS, ExplorerOptions, ExplorerPage, explorer_data, render_page, write_explorer

__all__ = ["DEFAULT_CHARS", "ExplorerOptions", "ExplorerPage", "explorer_data", "render_page", "write_explorer"]
