"""The embedded stack: a broker, Redis and the worker processes on loopback (`learnloop dev`, `learnloop demo`)."""
