"""`tunedock`: the command line. Tables by default, --json for scripts.

Exit codes: 0 ok, 1 job (or export) failed or cancelled, 2 usage error, 3 server or connection error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import msgspec

from tunedock import Client
from tunedock.errors import APIConnectionError, APIError, ExportFailed, JobFailed
from tunedock.types import FilePreview, JobEstimate

EXIT_OK, EXIT_JOB_FAILED, EXIT_USAGE, EXIT_SERVER = 0, 1, 2, 3


def _when(ts: int | None) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M:%S") if ts else "-"


def _table(rows: Iterable[dict[str, Any]], columns: list[str]) -> str:
    rows = [{c: "-" if r.get(c) is None else str(r.get(c)) for c in columns} for r in rows]
    widths = {c: max([len(c), *(len(r[c]) for r in rows)]) for c in columns}
    lines = ["  ".join(c.upper().ljust(widths[c]) for c in columns)]
    lines += ["  ".join(r[c].ljust(widths[c]) for c in columns) for r in rows]
    return "\n".join(lines)


def _out(args: argparse.Namespace, value: Any, columns: list[str], shape=None) -> None:  # noqa: ANN001
    data = msgspec.to_builtins(value)
    if args.json:
        print(json.dumps(data, indent=2))
        return
    items = data if isinstance(data, list) else [data]
    print(_table([shape(x) if shape else x for x in items], columns))


def _job_row(j: dict[str, Any]) -> dict[str, Any]:
    p = j.get("progress") or {}
    return {**j, "created": _when(j.get("created_at")),
            "step": f"{p.get('step', 0)}/{p.get('total_steps') or '?'}" if p else None,
            "loss": f"{p['loss']:.4f}" if p.get("loss") is not None else None,
            "model": j.get("fine_tuned_model")}


JOB_COLUMNS = ["id", "status", "base_model", "created", "step", "loss", "model"]


def _method(args: argparse.Namespace) -> dict[str, Any] | None:
    if args.method == "reinforcement":
        grader = getattr(args, "grader", None)
        if not grader:
            raise SystemExit("--method reinforcement needs --grader FILE (a grader as JSON, "
                             "README: Graders)")
        block: dict[str, Any] = {"grader": json.loads(Path(grader).read_text())}
        if getattr(args, "group_size", None):
            block["hyperparameters"] = {"group_size": args.group_size}
        return {"type": "reinforcement", "reinforcement": block}
    if args.method != "dpo":
        return None
    return {"type": "dpo", "dpo": {"hyperparameters": {"beta": args.beta}}} if args.beta else {"type": "dpo"}


def _hyper(args: argparse.Namespace) -> dict[str, Any]:
    pairs = {"n_epochs": args.epochs, "learning_rate": args.learning_rate, "batch_size": args.batch_size,
             "lora_r": args.lora_r, "max_seq_length": args.max_seq_length}
    return {k: v for k, v in pairs.items() if v is not None}


def _estimate_text(found: JobEstimate) -> str:
    d, e = found.dataset, found.estimate
    lines = [f"data: {d.format}, {d.n_train} training + {d.n_validation} validation examples, "
             f"{d.tokens} tokens", *(f"warning: {w}" for w in d.warnings)]
    if found.plan:
        p = found.plan
        lines.append(f"memory plan ({p['device']}): micro-batch {p['micro_batch_size']} x "
                     f"{p['gradient_accumulation_steps']}, about {p['estimated_peak_bytes'] / 2**30:.2f} GiB")
    if e.seconds is not None:
        lines.append(f"estimate on {e.device}: {e.seconds:.0f} s ({e.tokens} tokens at "
                     f"{e.tokens_per_second} tokens/s + {e.startup_seconds} s startup; "
                     f"from {e.calibration_jobs} finished job(s))")
    else:
        lines.append(f"estimate: none yet ({e.message})")
    return "\n".join(lines)


def _is_path(ref: str) -> bool:
    return not ref.startswith(("file-", "s3://"))


def _preview_text(found: FilePreview) -> str:
    """The check in words, then each row with its trained text in reverse video on a terminal
    (between [[ and ]] when piped)."""
    if found.valid:
        lines = [f"valid: {found.n_examples} examples ({found.format}) for {found.base_model}"]
    else:
        lines = [f"invalid: {found.message}",
                 *(f"  line {e.line}: {e.message}" for e in found.errors)]
        if found.n_errors > len(found.errors):
            lines.append(f"  ... and {found.n_errors - len(found.errors)} more")
    lines += [f"warning: {w}" for w in found.warnings]
    start, end = ("\x1b[7m", "\x1b[0m") if sys.stdout.isatty() else ("[[", "]]")
    for row in found.rows:
        lines += ["", f"--- line {row.line}: {row.tokens} tokens, {row.trained_tokens} trained"
                      f"{' (truncated)' if row.truncated else ''}", row.marked(start, end)]
    return "\n".join(lines)


def _preview(args: argparse.Namespace, client: Client) -> int:
    file_id = client.files.upload(args.file).id if _is_path(args.file) else args.file
    found = client.files.preview(file_id, base_model=args.model, n_rows=args.rows,
                                 method=args.method, max_seq_length=args.max_seq_length)
    print(msgspec.json.encode(found).decode() if args.json else _preview_text(found))
    return EXIT_OK if found.valid else EXIT_USAGE


GGUF_FORMATS = ("gguf_f16", "gguf_q8_0", "gguf_q4_k_m")


def _export(args: argparse.Namespace, client: Client) -> int:
    """Queue (or find) the export, wait for it, download it to -o, and for a GGUF write its
    Ollama Modelfile beside it, pointing at the downloaded file."""
    from pathlib import Path

    export = client.exports.create(args.job_id, format=args.format, checkpoint=args.checkpoint)
    export = client.exports.wait(export.id, progress=not args.json, timeout=args.timeout)
    out = Path(args.output or export.filename)
    if out.is_dir():
        out = out / (export.filename or export.id)
    client.exports.download(export.id, out, progress=not args.json)
    modelfile = None
    if export.format in GGUF_FORMATS:
        text = client.exports.modelfile(export.id)
        modelfile = out.with_name("Modelfile")
        lines = [f"FROM ./{out.name}" if line.startswith("FROM ") else line for line in text.splitlines()]
        modelfile.write_text("\n".join(lines) + "\n")
    if args.json:
        print(json.dumps({**msgspec.to_builtins(export), "path": str(out),
                          "modelfile": str(modelfile) if modelfile else None}, indent=2))
        return EXIT_OK
    checks = msgspec.to_builtins(export.checks) if export.checks else {}
    print(f"{out}  {export.bytes} bytes  sha256 {export.sha256}  ({export.seconds} s to export)")
    print("checks: " + ", ".join(f"{k} {v}" for k, v in checks.items()))
    if modelfile:
        print(f"{modelfile}: ollama create NAME -f {modelfile}")
    return EXIT_OK


def _migrate(args: argparse.Namespace, client: Client) -> int:
    """`tunedock migrate jobs|compare` (tunedock/migrate.py): from any OpenAI-compatible API."""
    import openai

    from tunedock import migrate

    target = client.openai()
    if args.action == "compare":
        print(migrate.compare(target, args.job_id, max_tokens=args.max_tokens).report())
        return EXIT_OK
    source = openai.OpenAI(base_url=args.from_base_url or os.environ.get("OPENAI_BASE_URL"),
                           api_key=args.from_api_key or os.environ.get("OPENAI_API_KEY"))
    try:
        model_map = migrate.parse_map(args.map)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    prompts = migrate.read_prompts(args.prompts) if args.prompts else None
    results = migrate.migrate_jobs(source, target, model_map, job_ids=args.job or None, prompts=prompts,
                                   max_prompts=args.max_prompts, max_tokens=args.max_tokens)
    for item in results:
        if item.skipped:
            print(f"{item.source_job}  skipped: {item.skipped}")
        else:
            golden = f", {item.golden_prompts} golden answers in {item.golden_file}" if item.golden_file else ""
            print(f"{item.source_job}  -> {item.target_job}{golden}")
    if not args.wait:
        return EXIT_OK
    failed = False
    for item in results:
        if item.target_job and not item.skipped:
            try:
                client.jobs.wait(item.target_job, progress=False)
            except JobFailed as exc:
                print(f"{item.target_job}  {exc}")
                failed = True
                continue
            print(f"{item.target_job}  succeeded")
            if item.golden_file:
                print(migrate.compare(target, item.target_job, max_tokens=args.max_tokens).report())
    return EXIT_JOB_FAILED if failed else EXIT_OK


def _graders(args: argparse.Namespace, client: Client) -> int:
    """`graders validate FILE` / `graders run FILE --sample TEXT [--item JSON]`: a grader as
    OpenAI's JSON; the run prints the reward (and, if it failed, which part and why)."""
    with open(args.grader) as f:
        grader = json.load(f)
    if args.action == "validate":
        found = client.graders.validate(grader)
        print(json.dumps(found, indent=2) if args.json else f"valid: {found['type']} grader {found['name']!r}")
        return EXIT_OK
    item = json.loads(args.item) if args.item else None
    found = client.graders.run(grader, args.sample, item)
    if args.json:
        print(msgspec.json.encode(found).decode())
        return EXIT_OK
    print(f"reward: {found.reward:g}")
    failed = {k: v for k, v in found.metadata.get("errors", {}).items() if v and v is not False}
    for name, value in found.sub_rewards.items():
        print(f"  {name}: {value:g}")
    if failed:
        print("failed: " + "; ".join(k if v is True else f"{k}: {v}" for k, v in failed.items()))
    return EXIT_OK


def run(args: argparse.Namespace, client: Client) -> int:
    cmd = (args.command, getattr(args, "action", None))
    if args.command == "export":
        return _export(args, client)
    if args.command == "migrate":
        return _migrate(args, client)
    if cmd == ("files", "upload"):
        _out(args, client.files.upload(args.path), ["id", "filename", "bytes", "uri"])
    elif cmd == ("files", "list"):
        _out(args, list(client.files.list()), ["id", "filename", "bytes", "uri"])
    elif cmd == ("files", "preview"):
        return _preview(args, client)
    elif cmd == ("jobs", "create") and args.dry_run:
        found = client.jobs.estimate(base_model=args.model, training_file=args.train,
                                     validation_file=args.validation, hyperparameters=_hyper(args),
                                     deploy=not args.no_deploy, method=_method(args))
        if args.json:
            print(msgspec.json.encode(found).decode())
        else:
            print(_estimate_text(found))
    elif cmd == ("jobs", "create"):
        job = client.jobs.create(base_model=args.model, training_file=args.train,
                                 validation_file=args.validation, suffix=args.suffix,
                                 hyperparameters=_hyper(args), deploy=not args.no_deploy,
                                 method=_method(args), priority=args.priority, gpus=args.gpus)
        if args.wait:
            job = client.jobs.wait(job.id, progress=not args.json)
        _out(args, job, JOB_COLUMNS, _job_row)
    elif cmd == ("jobs", "list"):
        _out(args, list(client.jobs.list(status=args.status)), JOB_COLUMNS, _job_row)
    elif cmd == ("jobs", "get"):
        _out(args, client.jobs.get(args.job_id), JOB_COLUMNS, _job_row)
    elif cmd == ("jobs", "cancel"):
        _out(args, client.jobs.cancel(args.job_id), JOB_COLUMNS, _job_row)
    elif cmd == ("jobs", "wait"):
        _out(args, client.jobs.wait(args.job_id, progress=not args.json), JOB_COLUMNS, _job_row)
    elif cmd == ("jobs", "events"):
        for event in client.jobs.events(args.job_id, stream=args.follow):
            if args.json:
                print(msgspec.json.encode(event).decode(), flush=True)
            else:
                print(f"{_when(event.created_at)}  {event.level:<7}  {event.message}", flush=True)
        if args.follow and client.jobs.get(args.job_id).status != "succeeded":
            return EXIT_JOB_FAILED
    elif cmd == ("jobs", "checkpoints"):
        _out(args, client.jobs.checkpoints(args.job_id), ["id", "epoch", "step", "uri", "metrics"])
    elif cmd == ("jobs", "results"):
        csv_text = client.jobs.results(args.job_id)
        if args.output:
            with open(args.output, "w") as f:
                f.write(csv_text)
        else:
            print(csv_text, end="")
    elif args.command == "models":
        _out(args, client.models.list(), ["id", "kind", "served", "status"])
    elif args.command == "graders":
        return _graders(args, client)
    elif args.command == "chat":
        import openai

        try:
            reply = client.openai().chat.completions.create(
                model=args.model, messages=[{"role": "user", "content": args.prompt}],
                max_tokens=args.max_tokens, temperature=0)
        except openai.APIStatusError as exc:
            error = exc.body if isinstance(exc.body, dict) else {}
            raise RuntimeError(f"{error.get('code') or exc.status_code}: {error.get('message') or exc}") from None
        except openai.APIConnectionError as exc:
            raise RuntimeError(f"could not reach {client.config.base_url}: {exc}") from None
        print(reply.choices[0].message.content)
    return EXIT_OK


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tunedock", description="Drive a tunedock fine-tuning service.")
    p.add_argument("--base-url", help="service URL (default: $TUNEDOCK_BASE_URL)")
    p.add_argument("--api-key", help="API key (default: $TUNEDOCK_API_KEY)")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    sub = p.add_subparsers(dest="command", required=True)

    files = sub.add_parser("files", help="upload and list training files")
    fsub = files.add_subparsers(dest="action", required=True)
    up = fsub.add_parser("upload", help="upload a JSONL file")
    up.add_argument("path")
    fsub.add_parser("list", help="list uploaded files")
    pv = fsub.add_parser("preview", help="check a file for a base model and show its first rows "
                                         "as trained (a local path is uploaded first)")
    pv.add_argument("file", help="local JSONL path or file- id")
    pv.add_argument("--model", required=True, help="base model alias")
    pv.add_argument("--rows", type=int, default=3)
    pv.add_argument("--method", choices=["supervised", "dpo"], default="supervised")
    pv.add_argument("--max-seq-length", type=int, default=2048)

    jobs = sub.add_parser("jobs", help="create and follow fine-tuning jobs")
    jsub = jobs.add_subparsers(dest="action", required=True)
    c = jsub.add_parser("create", help="create a job (a local --train file is uploaded first)")
    c.add_argument("--model", required=True, help="base model alias, or ft:… to continue a fine-tuned model")
    c.add_argument("--train", required=True, help="local JSONL path, file- id or s3:// URI")
    c.add_argument("--validation", help="local JSONL path, file- id or s3:// URI")
    c.add_argument("--suffix")
    c.add_argument("--epochs", type=int)
    c.add_argument("--learning-rate", type=float)
    c.add_argument("--batch-size", type=int)
    c.add_argument("--lora-r", type=int)
    c.add_argument("--max-seq-length", type=int)
    c.add_argument("--method", choices=["supervised", "dpo", "reinforcement"], default="supervised",
                   help="dpo: preference tuning on pairs (README: Preference tuning); reinforcement: "
                        "GRPO on prompts against --grader (README: Reinforcement fine-tuning)")
    c.add_argument("--beta", type=float, help="DPO's beta (default 0.1)")
    c.add_argument("--grader", help="reinforcement: a JSON file holding the grader (the reward)")
    c.add_argument("--group-size", type=int, help="reinforcement: completions per prompt (default 4)")
    c.add_argument("--no-deploy", action="store_true", help="do not load the adapter into vLLM")
    c.add_argument("--priority", type=int, default=0,
                   help="higher runs first among your own queued jobs (-100..100; default 0)")
    c.add_argument("--gpus", type=lambda v: v if v == "auto" else int(v), default=1,
                   help="devices to train on, one data-parallel rank each: a count that divides the "
                        "batch size, or auto (default 1)")
    c.add_argument("--wait", action="store_true", help="wait for the job, with a progress bar")
    c.add_argument("--dry-run", action="store_true",
                   help="check the data and show the memory plan and estimated duration; create nothing")
    lst = jsub.add_parser("list", help="list jobs")
    lst.add_argument("--status")
    for name, text in (("get", "show a job"), ("cancel", "cancel a job"),
                       ("wait", "wait for a job to end"), ("checkpoints", "list a job's checkpoints")):
        jsub.add_parser(name, help=text).add_argument("job_id")
    res = jsub.add_parser("results", help="a job's per-step metrics as CSV")
    res.add_argument("job_id")
    res.add_argument("-o", "--output", help="write the CSV here instead of to stdout")
    ev = jsub.add_parser("events", help="a job's events")
    ev.add_argument("job_id")
    ev.add_argument("--follow", action="store_true", help="stream new events until the job ends")

    ex = sub.add_parser("export", help="export a succeeded job's model (merged 16-bit or GGUF) and "
                                       "download it, with a progress bar")
    ex.add_argument("job_id")
    ex.add_argument("--format", required=True,
                    choices=["merged_16bit", "gguf_f16", "gguf_q8_0", "gguf_q4_k_m"])
    ex.add_argument("--checkpoint", type=int, help="export this epoch's checkpoint instead")
    ex.add_argument("-o", "--output", help="where to save it (a file, or a folder); a GGUF's "
                                           "Modelfile is written beside it")
    ex.add_argument("--timeout", type=float, help="give up waiting after this many seconds")

    mig = sub.add_parser("migrate", help="bring fine-tuning jobs over from OpenAI (or any "
                                         "OpenAI-compatible API) and compare the new models")
    msub = mig.add_subparsers(dest="action", required=True)
    mj = msub.add_parser("jobs", help="recreate the source's succeeded jobs here, with golden answers")
    mj.add_argument("--from-base-url", help="the source API (default: $OPENAI_BASE_URL, else OpenAI)")
    mj.add_argument("--from-api-key", help="the source's key (default: $OPENAI_API_KEY)")
    mj.add_argument("--map", action="append", required=True, metavar="SOURCE=BASE",
                    help="train jobs of the source model SOURCE on this service's base model BASE")
    mj.add_argument("--job", action="append", help="only this source job (repeatable)")
    mj.add_argument("--prompts", help="a JSONL of prompts for the golden answers ({\"messages\": …} "
                                      "or {\"prompt\": …}); default: the validation file's")
    mj.add_argument("--max-prompts", type=int, default=20)
    mj.add_argument("--max-tokens", type=int, default=256)
    mj.add_argument("--wait", action="store_true", help="wait for the new jobs, then compare each")
    mc = msub.add_parser("compare", help="score a migrated job's model against its golden answers")
    mc.add_argument("job_id")
    mc.add_argument("--max-tokens", type=int, default=256)

    sub.add_parser("models", help="list base models and deployed adapters")
    graders = sub.add_parser("graders", help="check or try a grader (OpenAI's JSON shapes)")
    gsub = graders.add_subparsers(dest="action", required=True)
    gsub.add_parser("validate", help="check a grader file").add_argument("grader", help="the grader as JSON")
    grun = gsub.add_parser("run", help="grade one sample against one item")
    grun.add_argument("grader", help="the grader as JSON")
    grun.add_argument("--sample", required=True, help="the model's answer ({{sample.output_text}})")
    grun.add_argument("--item", help="the dataset item as a JSON object ({{item.…}})")
    chat = sub.add_parser("chat", help="ask a model (base or fine-tuned) one question")
    chat.add_argument("model")
    chat.add_argument("prompt")
    chat.add_argument("--max-tokens", type=int, default=128)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        with Client(base_url=args.base_url, api_key=args.api_key) as client:
            return run(args, client)
    except (JobFailed, ExportFailed) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_JOB_FAILED
    except (APIError, APIConnectionError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_SERVER
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
