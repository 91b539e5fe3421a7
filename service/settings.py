"""Service settings: one struct, read once from TUNEDOCK_* environment variables at start-up."""

from __future__ import annotations

import os
from pathlib import Path

import msgspec


class BaseModelEntry(msgspec.Struct, frozen=True, kw_only=True):
    alias: str
    source: str  # a local folder (air-gapped) or a hub id

    @property
    def local_path(self) -> Path | None:
        p = Path(self.source)
        return p if p.is_dir() else None


class TenantBucket(msgspec.Struct, frozen=True, kw_only=True):
    """One grant of TUNEDOCK_TENANT_BUCKETS: `tenant` may name objects under bucket/prefix."""

    tenant: str
    bucket: str
    prefix: str = ""


class Settings(msgspec.Struct, kw_only=True):
    database_url: str = "sqlite+aiosqlite:///.data/tunedock.db"
    data_dir: str = ".data"
    # Object store: S3 when an endpoint or bucket credentials are given, else a local folder.
    s3_endpoint_url: str | None = None
    s3_region: str = "us-east-1"
    s3_access_key_id: str | None = None
    s3_secret_access_key: str | None = None
    s3_path_style: bool = True
    artifact_bucket: str = "tunedock"
    # Buckets every tenant's training_file / validation_file may name by s3:// URI. The
    # artifact bucket is never one: uploads are reached by their file- ids only.
    readable_buckets: tuple[str, ...] = ()
    # Per-tenant grants (`tenant=bucket[/prefix],…`): what one tenant may name by s3:// URI.
    tenant_buckets: tuple[TenantBucket, ...] = ()
    max_upload_bytes: int = 1 << 30
    max_line_bytes: int = 4 << 20
    base_models: tuple[BaseModelEntry, ...] = ()
    # Base aliases some vLLM instance serves; empty means "serving not configured".
    served_models: tuple[str, ...] = ()
    serving_url: str | None = None
    serving_api_key: str | None = None
    # The serving side (python -m serving, the resolver plugin) asks the API which adapters to
    # serve at api_url, with internal_api_key; the API answers /internal only with that key.
    api_url: str = "http://127.0.0.1:8080"
    internal_api_key: str | None = None
    # Serving (python -m serving): the base alias this vLLM serves, and how.
    serve_model: str | None = None
    vllm_host: str = "127.0.0.1"
    vllm_port: int = 8000
    vllm_max_loras: int = 4
    vllm_max_cpu_loras: int = 16
    vllm_memory_fraction: float | None = None
    # An absolute KV cache size (GiB). On vLLM's CPU backend a fraction is taken of NUMA node 0,
    # which on a fresh VM reports far less than the machine has, so CPU set-ups size it this way.
    vllm_kv_cache_gib: float | None = None
    vllm_max_model_len: int | None = None
    vllm_extra_args: str = ""
    max_lora_rank: int = 64
    adapter_dir: str = ".data/adapters"
    reconcile_seconds: float = 10.0
    host: str = "127.0.0.1"
    port: int = 8080
    log_json: bool = True
    log_level: str = "info"
    # Runner
    runner_gpus: str | None = None
    lease_seconds: float = 60.0
    heartbeat_seconds: float = 5.0
    max_attempts: int = 3
    # How often the API requeues jobs whose lease expired (runners also do it before each claim).
    sweep_seconds: float = 5.0
    poll_seconds: float = 1.0
    cancel_grace_seconds: float = 5.0
    max_oom_retries: int = 2
    # Keep a training child per slot that has already imported torch/Unsloth/TRL, so a claimed
    # job starts without waiting for the imports.
    warm_child: bool = True
    # Bitwise-reproducible training (torch's deterministic algorithms, one CPU thread): slower;
    # for checking that a resumed job retraces an uninterrupted one.
    deterministic_training: bool = False
    # Address-space cap for each training child (CPU runners: keeps one job from taking the
    # machine; going over it is handled like a CUDA out-of-memory).
    training_memory_limit_bytes: int | None = None

    @property
    def uses_s3(self) -> bool:
        return bool(self.s3_endpoint_url or self.s3_access_key_id)

    def may_read(self, tenant: str, bucket: str, key: str) -> bool:
        """Whether `tenant` may name s3://bucket/key in a job."""
        if bucket == self.artifact_bucket:
            return False
        return bucket in self.readable_buckets or any(
            g.tenant == tenant and g.bucket == bucket and key.startswith(g.prefix)
            for g in self.tenant_buckets)

    def base_model(self, alias: str) -> BaseModelEntry | None:
        return next((m for m in self.base_models if m.alias == alias), None)


def _parse_base_models(raw: str) -> tuple[BaseModelEntry, ...]:
    """`alias=source,alias2=source2` (a source is a folder or a hub id)."""
    entries = []
    for part in filter(None, (p.strip() for p in raw.split(","))):
        alias, sep, source = part.partition("=")
        if not sep or not alias or not source:
            raise ValueError(f"TUNEDOCK_BASE_MODELS entry {part!r} is not alias=source")
        entries.append(BaseModelEntry(alias=alias.strip(), source=source.strip()))
    return tuple(entries)


def _parse_tenant_buckets(raw: str) -> tuple[TenantBucket, ...]:
    """`tenant=bucket[/prefix],…`"""
    grants = []
    for part in filter(None, (p.strip() for p in raw.split(","))):
        tenant, sep, where = part.partition("=")
        bucket, _, prefix = where.partition("/")
        if not sep or not tenant or not bucket:
            raise ValueError(f"TUNEDOCK_TENANT_BUCKETS entry {part!r} is not tenant=bucket[/prefix]")
        grants.append(TenantBucket(tenant=tenant.strip(), bucket=bucket.strip(), prefix=prefix))
    return tuple(grants)


def _csv(raw: str) -> tuple[str, ...]:
    return tuple(filter(None, (p.strip() for p in raw.split(","))))


_CONVERTERS = {
    "base_models": _parse_base_models,
    "readable_buckets": _csv,
    "tenant_buckets": _parse_tenant_buckets,
    "served_models": _csv,
}


def load_settings(env: dict[str, str] | None = None, **overrides: object) -> Settings:
    """Build Settings from TUNEDOCK_<FIELD> variables; keyword overrides win (used by tests)."""
    env = dict(os.environ if env is None else env)
    raw: dict[str, object] = {}
    for field in msgspec.structs.fields(Settings):
        value = env.get(f"TUNEDOCK_{field.name.upper()}")
        if value is None:
            continue
        conv = _CONVERTERS.get(field.name)
        raw[field.name] = conv(value) if conv else value
    raw.update(overrides)
    # strict=False turns "8080" into 8080 and "false" into False.
    return msgspec.convert(raw, Settings, strict=False)
