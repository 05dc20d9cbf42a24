"""Helpers of the ragrail load tests: query sets, gRPC call reporting, SLO gates.

``slo`` and ``queries`` import neither locust nor gevent, so the SLO evaluator
and the query loader can be used (and tested) outside a locust process.
"""
