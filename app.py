"""Streamlit entry point: `streamlit run app.py` (or `make run`). The shell is drawn first, the page (and its
heavy imports) after it, so a first open paints at once."""

from explorer.app.ui import shell

top = shell.draw()

from explorer.app.ui.main import main  # noqa: E402  (imported after the shell is drawn: it pulls in PyTorch)

main(top)
