"""Load scenarios (locust) and the async-vs-inline comparison of the stack."""
