"""The HTTP server: the FastAPI app, its schemas, dynamic batching, LibreTranslate's API and the
web page."""
