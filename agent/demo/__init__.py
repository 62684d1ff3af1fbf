"""The demo: a simulated machine, a local receiver and the runner that shows alerts live."""
