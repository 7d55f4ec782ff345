"""Running configurations: one recipe to one RunResult (`runner`), the run cache every consumer goes
through, the scheduler every piece of CPU work runs under (`scheduler`, its processes in `workers`), sweeps
(grid, executor, table), per-layer sensitivity, the page's run board and the background landscape, and the
one builder from slider values to a recipe (`controls`)."""
