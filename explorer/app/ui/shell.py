"""The page's shell: its title, the sidebar's heading and a line saying what is loading, drawn before any heavy
import (PyTorch and the compression libraries take seconds to import on a first open, more on a busy machine).
Imports nothing but Streamlit."""

from __future__ import annotations

import streamlit as st

TITLE = "Compression trade-off explorer"
LOADING = ("Starting: loading PyTorch, the models and their cards. A first open takes a few seconds; the page "
           "fills in below.")


def draw():
    """The shell, and the placeholder just under the title where the page's first line goes."""
    st.set_page_config(page_title="Compression explorer", layout="wide")
    st.title(TITLE)
    st.sidebar.header("Configuration")
    top = st.empty()
    top.caption(LOADING)
    return top
