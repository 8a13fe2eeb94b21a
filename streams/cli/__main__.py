"""`python -m streams.cli ...`: the tests and `streams/worker_process.py` start commands so."""

from streams.cli import main

main()
