"""API keys (who a request is) and Idempotency-Key records (which resource a replayed request
already made): store.py holds their SQL."""
