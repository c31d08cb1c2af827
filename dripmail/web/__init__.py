"""The web edge: sign-up with double opt-in, link pages, provider webhooks, the live preview.

`create_app(project, settings, preview=False)` in `dripmail.web.app` builds the Starlette app;
`send.py serve` runs it under uvicorn.
"""
