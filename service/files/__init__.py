"""Uploaded training files: routes.py (the native API), service.py (upload, check, preview,
delete), store.py (their SQL). routes.py holds the native and the /v1 routes side by side."""
