"""What users touch: the service API the page calls, the Streamlit page (`ui`, which never imports torch),
the command line, charts, reports, decision metrics (Pareto front, sweet spot) and the one-page summary."""
