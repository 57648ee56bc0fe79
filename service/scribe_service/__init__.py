"""scribe-reward service: FastAPI app, pipeline stages and CLI."""
