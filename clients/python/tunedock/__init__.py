"""tunedock: the Python SDK for the tunedock fine-tuning service.

    from tunedock import Client
    with Client() as client:                      # TUNEDOCK_BASE_URL, TUNEDOCK_API_KEY
        job = client.jobs.create(base_model="smollm2", training_file="data.jsonl")
        job = client.jobs.wait(job.id)
"""

from tunedock._client import AsyncClient, Client
from tunedock.errors import (
    APIConnectionError,
    APIError,
    AuthenticationError,
    BadRequestError,
    ConflictError,
    ExportFailed,
    JobFailed,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    ServerError,
    TunedockError,
)
from tunedock.types import Checkpoint, Event, Export, ExportChecks, File, FilePreview, Job, JobEstimate, Model

__all__ = [
    "FilePreview",
    "APIConnectionError", "APIError", "AsyncClient", "AuthenticationError", "BadRequestError",
    "Checkpoint", "Client", "ConflictError", "Event", "Export", "ExportChecks", "ExportFailed", "File",
    "Job", "JobEstimate", "JobFailed",
    "Model",
    "NotFoundError", "PermissionDeniedError", "RateLimitError", "ServerError", "TunedockError",
]
__version__ = "0.1.0"
