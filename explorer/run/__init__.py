"""Running configurations: one recipe to one RunResult (`runner`), the run cache every consumer goes
through, sweeps (grid, executor, table), per-layer sensitivity, the page's run board and the background
landscape, and the one builder from slider values to a recipe (`controls`)."""
