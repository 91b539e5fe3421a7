"""Webhooks: a tenant's endpoints, told when its jobs end, pause, resume or save a checkpoint.

The path of one webhook: a job's status changes (or it saves a checkpoint) and the job's event is
written in the same transaction as the change (service/jobs/store_jobs.transition), so the event
log is the durable outbox. The API's dispatcher (dispatch.py) follows that log and writes one
delivery row per subscribed endpoint (store.py); it then POSTs each due delivery, signed by the
Standard Webhooks scheme (signing.py), and retries with backoff until the receiver answers 2xx or
the attempts run out. Every attempt is kept on its delivery (GET /webhooks/{id}/deliveries).
Endpoints are managed as OpenAI's API manages them (`/v1/webhook_endpoints`, the `openai` SDK's
`client.webhooks`), and on the native API at `/webhooks` (routes.py).
"""
