"""The HTTP service: OpenAI-compatible images API, translation, job progress, web UI.

Kept free of imports on purpose: the gateway (no torch) reads `api/static` through
`importlib.resources`. The app factory is `text2img.api.app.create_app`.
"""
