"""Streamlit entry point: `streamlit run app.py` (or `make run`)."""

from explorer.ui.main import main

main()
