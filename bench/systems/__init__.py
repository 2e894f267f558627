"""One runner module per system; each runs as its own process under bench/run.py."""
