"""`make bench`: tidings next to the raw drivers and the peers, each system's worker in its own process.

The harness (`runner.py`) never imports a system: it starts `python -m bench.suite.drive SYSTEM ...`
for the producer side and each system's own worker command for the consumer side, so that the peers'
global state (Celery's app, Dramatiq's broker, ...) stays in their processes.
"""
