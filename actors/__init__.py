"""The concurrency shell of Ensemble: gevent actors, one module per actor."""
