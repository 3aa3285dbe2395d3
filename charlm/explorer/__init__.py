"""The explorer: `charlm inspect-neurons --html` writes one self-contained page to look inside a model.

page.py gathers the data and writes the file; page.html, page.css and page.js are the page
itself and model.js its forward pass, package data inlined into every page (weights.py puts
the model in it). Importing this package stays light (no torch) so the command line can show
DEFAULT_CHARS in its help; the rest loads on first use.
"""

DEFAULT_CHARS = 20_000  # what a page holds unless --chars asks: about 10 MB with the default model (LSTM 1x256)

__all__ = ["DEFAULT_CHARS", "ExplorerOptions", "ExplorerPage", "explorer_data", "render_page", "write_explorer"]


def __getattr__(name: str):
    if name in __all__:
        from . import page

        return getattr(page, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
