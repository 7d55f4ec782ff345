"""Streamlit pages: read widgets, build requests, call the backend, draw. No torch code here."""
