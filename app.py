"""Streamlit entry point: `streamlit run app.py` (or `make run`). The shell is drawn first, the page (and its
heavy imports) after it, so a first open paints at once.

Streamlit runs this file as `__main__`, and multiprocessing's "spawn" (every process explorer.core.spawn starts:
the checks of a user's model, the landscape's worker, a sweep's pool) re-imports the parent's `__main__` file in
each child, as `__mp_main__`. This guard, the one there is, keeps those children from drawing the page and
queueing its runs: without it every child computed the page's default configuration beside its own work."""

if __name__ == "__main__":
    from explorer.app.ui import shell
    from explorer.core.opening import page_opening  # (standard library only)

    with page_opening():  # the server's own start-up run waits while this page's shell is drawn
        top = shell.draw()

    from explorer.app.ui.main import main  # (imported after the shell is drawn: it pulls in PyTorch)

    main(top)
