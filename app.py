"""Streamlit entry point: `streamlit run app.py` (or `make run`)."""

from explorer.app.ui.main import main

main()
