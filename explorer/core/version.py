"""The package's version and the RunResult schema's version. The root package re-exports both; the layers import
them from here, since importing the root package would pull its lazy re-exports of every layer into their graph."""

__version__ = "0.1.0"
SCHEMA_VERSION = 5  # of the RunResult JSON (explorer.run.result)
