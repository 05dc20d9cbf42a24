"""ragrail: LLM pipelines served as gRPC microservices on Ray Serve."""

__version__ = "0.1.0"
