"""The explorer's web server as `make run` starts it: `python -m explorer.app.serve [Streamlit's options]`.

Before it accepts the first visitor it does what that visitor would otherwise wait for:

1. imports the page's libraries (PyTorch, SciPy, pandas, plotly: about 3.5 s on a 2-core machine, which a first
   visitor of `streamlit run app.py` spent looking at a page with only its title), and the part of PyTorch a
   run's first optimiser imports (1.7 s more, which the first run paid);
2. queues the default model's default configuration, and the baseline it is compared with, on the server's run
   board (explorer.app.service.start_default): the first page finds its figures computed or on the way, and takes
   the run over from the server as its own (explorer.run.jobs.STARTUP).

Then it hands over to Streamlit's own command line, `streamlit run app.py` with the options given, in this same
process: the page the server draws uses the modules and the run board this start-up filled. A start-up step that
fails is one line on the console, and the server starts all the same: the page says what is wrong there.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

APP = Path(__file__).resolve().parents[2] / "app.py"


def warm() -> str | None:
    """Import the page's libraries and queue the default configuration; the run's key, or None."""
    t0 = time.perf_counter()
    # the page's heavy imports (explorer.app.ui.main's own are Streamlit's, made inside its runtime)
    import torch._dynamo  # noqa: F401  (what a run's first optimiser imports: 1.7 s, once per process)

    import explorer.app.plots  # noqa: F401  (plotly)
    from explorer.app import service  # PyTorch, SciPy, pandas

    key = service.start_default()
    print(f"Explorer: the page's libraries imported and the default configuration queued in "
          f"{time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    return key


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    try:
        warm()
    except Exception as e:  # the server starts all the same; the page shows what is wrong
        print(f"Explorer: start-up step failed ({type(e).__name__}: {e}); starting the server anyway",
              file=sys.stderr, flush=True)
    from streamlit.web import cli

    sys.argv = ["streamlit", "run", str(APP), *args]
    cli.main()  # Streamlit's command line: serves until stopped
    return 0


if __name__ == "__main__":
    sys.exit(main())
