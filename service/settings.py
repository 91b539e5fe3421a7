"""Service settings: one struct, read once from TUNEDOCK_* environment variables at start-up, each
field documented where it is declared (its role and meaning); `python -m service.settings` prints
the README's configuration tables from those docs, and a test checks the README against them."""

from __future__ import annotations

import os
import socket
import typing
from pathlib import Path
from typing import Annotated

import msgspec


class BaseModelEntry(msgspec.Struct, frozen=True, kw_only=True):
    alias: str
    source: str  # a local folder (air-gapped) or a hub id

    @property
    def local_path(self) -> Path | None:
        p = Path(self.source)
        return p if p.is_dir() else None


class TenantBucket(msgspec.Struct, frozen=True, kw_only=True):
    """One grant of TUNEDOCK_TENANT_BUCKETS: `tenant` may name objects under bucket/prefix, where
    the prefix names a folder: `datasets/acme` covers `acme/…`, never `acme2/…` or `acme-corp/…`."""

    tenant: str
    bucket: str
    prefix: str = ""  # a folder, without leading or trailing slashes; "" is the whole bucket

    def covers(self, tenant: str, bucket: str, key: str) -> bool:
        """Whether the grant covers s3://bucket/key for `tenant` (a key with `..` steps is refused
        before this is asked: storage.is_safe_key)."""
        if self.tenant != tenant or self.bucket != bucket:
            return False
        return not self.prefix or key.startswith(self.prefix + "/")


# The role a setting is for. Every process reads the same TUNEDOCK_* environment, so the settings
# stay one flat struct (one name per variable); the roles group their declarations below and the
# README's configuration tables, which `python -m service.settings` writes from these docs.
STORAGE, API, RUNNER, SERVING = "storage", "api", "runner", "serving"
ROLES = {
    STORAGE: "Storage (every role): the database and the object store",
    API: "API: the HTTP front door, data checks, the gateway",
    RUNNER: "Runner: claiming, supervising and training jobs",
    SERVING: "Serving: the vLLM sidecar and the LoRA resolver",
}


def doc(role: str, text: str, default: str | None = None) -> msgspec.Meta:
    """A setting's role and meaning (and its default in words, where the value says too little)."""
    extra = {"role": role, **({"default": default} if default is not None else {})}
    return msgspec.Meta(description=text, extra=extra)


class Settings(msgspec.Struct, kw_only=True):
    # -- storage ---------------------------------------------------------------------------------
    database_url: Annotated[str, doc(STORAGE, "SQLAlchemy URL; `postgresql+asyncpg://…` at scale")] = (
        "sqlite+aiosqlite:///.data/tunedock.db")
    data_dir: Annotated[str, doc(STORAGE, "local artifacts (when no S3), runner work folders, the dev key")] = ".data"
    s3_endpoint_url: Annotated[str | None, doc(
        STORAGE, "S3 endpoint (MinIO, R2, …); S3 is used when this or a key is set, else a local folder")] = None
    s3_region: Annotated[str, doc(STORAGE, "region")] = "us-east-1"
    s3_access_key_id: Annotated[str | None, doc(STORAGE, "access key (else boto3's chain)")] = None
    s3_secret_access_key: Annotated[str | None, doc(STORAGE, "secret key (else boto3's chain)")] = None
    s3_path_style: Annotated[bool, doc(STORAGE, "path-style addressing (MinIO)")] = True
    s3_max_attempts: Annotated[int, doc(
        STORAGE, "attempts per S3 call, first included (botocore's standard retries, with "
                 "exponential backoff), before the call counts as failed")] = 5
    artifact_bucket: Annotated[str, doc(STORAGE, "uploads, checkpoints and adapters")] = "tunedock"
    # -- api -------------------------------------------------------------------------------------
    host: Annotated[str, doc(API, "where the API listens")] = "127.0.0.1"
    port: Annotated[int, doc(API, "where the API listens")] = 8080
    api_workers: Annotated[int, doc(
        API, "processes of `python -m service api` sharing its port: the gateway's per-request work "
             "(key check, model check, opening the upstream stream) spreads over them; `/metrics` "
             "adds up all of them"), msgspec.Meta(ge=1)] = 1
    log_json: Annotated[bool, doc(API, "structlog JSON lines (every role)")] = True
    log_level: Annotated[str, doc(API, "log level (every role)")] = "info"
    readable_buckets: Annotated[tuple[str, ...], doc(
        API, "comma list of buckets every tenant's `training_file` may name by `s3://` URI (never the "
             "artifact bucket: uploads are reached by their file- ids only)")] = ()
    tenant_buckets: Annotated[tuple[TenantBucket, ...], doc(
        API, "per-tenant grants `tenant=bucket[/prefix],…`: what one tenant may name by `s3://` URI")] = ()
    max_upload_bytes: Annotated[int, doc(API, "`POST /files` limit (413 beyond)")] = 1 << 30
    max_line_bytes: Annotated[int, doc(API, "longest JSONL line validation accepts")] = 4 << 20
    base_models: Annotated[tuple[BaseModelEntry, ...], doc(
        API, "registry `alias=folder-or-hub-id,…` (`make up` sets `smollm2=…`); runners read it too")] = ()
    served_models: Annotated[tuple[str, ...], doc(
        API, "base aliases some vLLM instance serves (with `SERVING_URL`, jobs on others need "
             "`deploy: false`); empty: serving not configured")] = ()
    serving_url: Annotated[str | None, doc(
        API, "vLLM's internal `/v1` URL(s), comma-separated for several replicas (model names are "
             "hashed over them): the API's gateway uses them, and a runner's training children ask a "
             "score_model grader's judge at the first")] = None
    serving_api_key: Annotated[str | None, doc(API, "the key vLLM expects (the gateway's and the sidecar's)")] = None
    gateway_load_wait_seconds: Annotated[float, doc(
        API, "how long a chat call naming an adapter that is still being loaded and checked waits for "
             "it (a deployment answers only once `loaded`, after the serving-contract check); then 503 "
             "`model_loading`")] = 30.0
    internal_api_key: Annotated[str | None, doc(
        API, "the key of the API's `/internal` endpoint, which the serving side asks what to serve "
             "(the API answers `/internal` only with it; `service up` makes one per start)")] = None
    key_cache_seconds: Annotated[float, doc(
        API, "how long each API process trusts a key it looked up: a revoked key stops working "
             "within this time (`python -m service keys revoke`)")] = 30.0
    metrics_api_key: Annotated[str | None, doc(
        API, "the key Prometheus scrapes `/metrics` with (Bearer); tenant keys are refused there, "
             "and with none set `/metrics` answers 401")] = None
    webhook_allow_private_urls: Annotated[bool, doc(
        API, "let webhook endpoints name loopback, private, link-local and other non-public "
             "addresses (a receiver inside your own network); off, such URLs are refused at "
             "registration and again before each delivery")] = False
    webhook_max_attempts: Annotated[int, doc(
        API, "delivery attempts of one webhook event before it is marked failed")] = 12
    webhook_backoff_seconds: Annotated[float, doc(
        API, "the wait before a webhook's first retry; each later retry waits twice as long, "
             "at most an hour")] = 5.0
    webhook_timeout_seconds: Annotated[float, doc(
        API, "how long a webhook receiver has to answer one delivery")] = 10.0
    webhook_poll_seconds: Annotated[float, doc(
        API, "how often the API looks for job events to send and deliveries due")] = 1.0
    sweep_seconds: Annotated[float, doc(
        API, "how often the API requeues jobs whose lease expired (so a dead runner's job resumes "
             "even with no other runner up; runners also do it before each claim)")] = 5.0
    python_grader_wall_seconds: Annotated[float, doc(
        API, "a python grader's wall-clock limit per sample; past it the sample scores 0 "
             "(service/graders/sandbox.py)")] = 20.0
    python_grader_cpu_seconds: Annotated[int, doc(
        API, "a python grader's CPU-time limit per sample")] = 10
    python_grader_memory_mb: Annotated[int, doc(
        API, "a python grader's address-space limit, MiB (Python itself takes ~30)")] = 1024
    python_grader_output_kb: Annotated[int, doc(
        API, "the most a python grader may print, KiB")] = 64
    wordnet_dir: Annotated[str | None, doc(
        API, "the WordNet 3.0 database folder METEOR's synonym stage reads (Debian/Ubuntu's "
             "`wordnet-base`, or an nltk_data `corpora/wordnet`); missing: exact words and stems only, "
             "and the run says `meteor_synonyms: false`")] = "/usr/share/wordnet"
    embedding_url: Annotated[str | None, doc(
        API, "an OpenAI-style `/v1` with `/embeddings` for text_similarity's `cosine` (e.g. a vLLM "
             "started with `--runner pooling`, Hugging Face TEI, llama.cpp's server); runners grading "
             "evals and rewards need it too. Unset: graders with `cosine` are refused")] = None
    embedding_model: Annotated[str | None, doc(
        API, "the model name sent to TUNEDOCK_EMBEDDING_URL", "the first one its `/models` lists")] = None
    embedding_api_key: Annotated[str | None, doc(API, "the bearer key TUNEDOCK_EMBEDDING_URL expects")] = None
    score_model_timeout_seconds: Annotated[float, doc(
        API, "how long a score_model grader's judge (or cosine's embedding model) has to answer one "
             "sample")] = 60.0
    # -- runner ----------------------------------------------------------------------------------
    runner_gpus: Annotated[str | None, doc(
        RUNNER, "GPU indices for `python -m service runner`", "all visible")] = None
    runner_cpu_devices: Annotated[int, doc(
        RUNNER, "devices a runner without GPUs trains on, each with its own lanes and its share of the "
                "cores; several stand in for GPUs: a job with gpus: N trains as N ranks over gloo")] = 1
    runner_auto_gpus_min_tokens: Annotated[int, doc(
        RUNNER, "a job with gpus \"auto\" trains on several devices only when it trains at least this "
                "many tokens (examples x mean length x epochs): below it, starting the ranks costs more "
                "than they save")] = 2_000_000
    runner_jobs_per_gpu: Annotated[int | None, doc(
        RUNNER, "the most jobs one GPU trains at once; a job starts beside others only when its plan "
                "fits the memory they leave (on a CPU-only runner: its one CPU slot)",
        "4 per GPU, 1 on the CPU")] = None
    runner_memory_reserve_mb: Annotated[int, doc(
        RUNNER, "MiB of each GPU's memory no job's plan may take, beyond each plan's own margin")] = 1024
    runner_device_memory_mb: Annotated[int | None, doc(
        RUNNER, "MiB per device that training jobs may plan with together, e.g. to leave the rest of "
                "the GPU to vLLM (on a CPU-only runner: the host memory its jobs share)",
        "all the GPU has; on the CPU, no limit")] = None
    lease_seconds: Annotated[float, doc(RUNNER, "a job's lease")] = 60.0
    heartbeat_seconds: Annotated[float, doc(RUNNER, "how often the lease is renewed")] = 5.0
    max_attempts: Annotated[int, doc(RUNNER, "attempts before a job whose runner keeps dying fails")] = 3
    tenant_max_running_jobs: Annotated[int | None, doc(
        RUNNER, "the most jobs one tenant runs at once over all runners (see also tenant_max_gpus); "
                "whatever it is, runners are shared fairly: the tenant "
                "with the fewest running jobs starts its next job first", "no limit")] = None
    tenant_max_gpus: Annotated[int | None, doc(
        RUNNER, "the most GPUs one tenant's running jobs hold at once over all runners: a job on N "
                "GPUs counts N, a job sharing a GPU counts 1; a tenant at it waits and the next "
                "tenant in turn goes", "no limit")] = None
    poll_seconds: Annotated[float, doc(RUNNER, "how often an idle runner looks for a queued job")] = 1.0
    cancel_grace_seconds: Annotated[float, doc(RUNNER, "SIGTERM → SIGKILL grace on cancel")] = 5.0
    max_oom_retries: Annotated[int, doc(
        RUNNER, "out-of-memory retries, each capped at half the micro-batch that failed; the retry's "
                "plan takes the largest micro-batch under the cap that fits the memory free then, down to 1")] = 2
    rollout_url: Annotated[str | None, doc(
        RUNNER, "a vLLM `/v1` on this runner's host that samples reinforcement jobs' rollouts (e.g. the "
                "sidecar's): it must serve the job's base under its alias, allow runtime LoRA loading and "
                "read the runner's work folders; each step's adapter is loaded there as "
                "`rollout-<job>-r<rank>` (service/training/rollouts.py). Unset, or a vLLM that cannot: "
                "the training process samples them")] = None
    warm_child: Annotated[bool, doc(
        RUNNER, "keep one training child per slot with torch/Unsloth/TRL already imported, so a "
                "claimed job skips the imports (a CPU slot forks it from a process that imported them once)")] = True
    deterministic_training: Annotated[bool, doc(
        RUNNER, "torch's deterministic algorithms and one CPU thread: bitwise-repeatable runs (slower); "
                "for checking that a resumed job retraces an uninterrupted one")] = False
    training_memory_limit_bytes: Annotated[int | None, doc(
        RUNNER, "address-space cap per training child (CPU runners: keeps one job from taking the "
                "machine); hitting it is retried like a CUDA OOM")] = None
    llama_cpp_bin: Annotated[str | None, doc(
        RUNNER, "the `tunedock-llama` command GGUF exports use (llama.cpp's quantizer, tokenizer "
                "and runtime; `make llama-cpp` builds it)", "the environment's bin/tunedock-llama")] = None
    # -- serving ---------------------------------------------------------------------------------
    api_url: Annotated[str, doc(
        SERVING, "where the serving side (`python -m serving`, the resolver plugin) reaches the API; "
                 "it never opens the database")] = "http://127.0.0.1:8080"
    serve_model: Annotated[str | None, doc(SERVING, "the base alias this vLLM serves")] = None
    vllm_host: Annotated[str, doc(SERVING, "where vLLM listens (internal only)")] = "127.0.0.1"
    vllm_port: Annotated[int, doc(SERVING, "where vLLM listens (internal only)")] = 8000
    serving_replica: Annotated[str | None, doc(
        SERVING, "this replica's URL as `SERVING_URL` lists it: its own deployment state is kept "
                 "under it, and the gateway sends an adapter to a replica that reports it loaded",
        "`http://VLLM_HOST:VLLM_PORT/v1` (the host's name for 0.0.0.0)")] = None
    vllm_max_loras: Annotated[int, doc(SERVING, "adapters vLLM holds on the GPU at once")] = 4
    vllm_max_cpu_loras: Annotated[int, doc(SERVING, "adapters vLLM keeps in CPU memory")] = 16
    vllm_memory_fraction: Annotated[float | None, doc(SERVING, "vLLM's GPU memory fraction")] = None
    vllm_kv_cache_gib: Annotated[float | None, doc(
        SERVING, "an absolute KV cache size in GiB; use it on CPU, where a fraction is taken of NUMA "
                 "node 0, which reads low on a fresh VM")] = None
    vllm_max_model_len: Annotated[int | None, doc(SERVING, "vLLM's context length")] = None
    vllm_extra_args: Annotated[str, doc(SERVING, "more arguments for vLLM's OpenAI server")] = ""
    max_lora_rank: Annotated[int, doc(
        SERVING, "the largest LoRA rank vLLM is started for; jobs with a larger `lora_r` and "
                 "`deploy: true` are refused")] = 64
    adapter_dir: Annotated[str, doc(SERVING, "where the sidecar keeps fetched adapters")] = ".data/adapters"
    reconcile_seconds: Annotated[float, doc(
        SERVING, "how often the sidecar compares what vLLM serves with what the API wants")] = 10.0
    serving_check_tolerance: Annotated[float | None, doc(
        SERVING, "the serving-contract check: before a deployment counts as loaded, the largest "
                 "difference in a token's probability allowed between the served adapter and the trained "
                 "one over the sequences recorded with it (serving/check.py); unset turns the check off")] = 0.3

    @property
    def replica_name(self) -> str:
        # Listening on every address says nothing of where the gateway reaches it: the host's
        # name (a pod's name) at least keeps replicas apart.
        host = socket.gethostname() if self.vllm_host in ("0.0.0.0", "::", "") else self.vllm_host
        return (self.serving_replica or f"http://{host}:{self.vllm_port}/v1").rstrip("/")

    @property
    def uses_s3(self) -> bool:
        return bool(self.s3_endpoint_url or self.s3_access_key_id)

    def may_read(self, tenant: str, bucket: str, key: str) -> bool:
        """Whether `tenant` may name s3://bucket/key in a job."""
        if bucket == self.artifact_bucket:
            return False
        return bucket in self.readable_buckets or any(
            g.covers(tenant, bucket, key) for g in self.tenant_buckets)

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
        grants.append(TenantBucket(tenant=tenant.strip(), bucket=bucket.strip(), prefix=prefix.strip("/")))
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


def _default(field: msgspec.structs.FieldInfo, meta: dict) -> str:
    if "default" in meta:
        return meta["default"]
    value = field.default
    if value in (None, (), ""):
        return "–"
    return f"`{str(value).lower() if isinstance(value, bool) else value}`"


def markdown() -> str:
    """The README's configuration tables: one per role, each variable with its default and meaning."""
    hints = typing.get_type_hints(Settings, include_extras=True)
    by_role: dict[str, list[str]] = {role: [] for role in ROLES}
    for field in msgspec.structs.fields(Settings):
        meta = next(m for m in typing.get_args(hints[field.name])[1:] if isinstance(m, msgspec.Meta))
        by_role[meta.extra["role"]].append(
            f"| `TUNEDOCK_{field.name.upper()}` | {_default(field, meta.extra)} | {meta.description} |")
    out = []
    for role, title in ROLES.items():
        out += [f"**{title}**", "", "| variable | default | meaning |", "|---|---|---|", *by_role[role], ""]
    return "\n".join(out).rstrip() + "\n"


if __name__ == "__main__":
    print(markdown(), end="")
