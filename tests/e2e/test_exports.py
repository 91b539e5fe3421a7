"""Exports end to end on the CPU: a job trained on the test model to answer a code word, then
each format exported by a real runner through the API and checked by a round trip:

- merged_16bit: greedy answers equal base + adapter's on 8 prompts, logits within tolerance;
- gguf_f16: loaded back with transformers' GGUF loader, the same greedy answers as merged;
- gguf_q8_0: downloaded with the CLI, llama.cpp (the exported file, its own tokenizer) still
  answers the taught code word; q4_k_m loads in llama.cpp and is llama.cpp's 4-bit mix;
- the Modelfile's template, rendered by Go's text/template (what Ollama uses), equals the base
  model's chat template rendered by transformers.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import tunedock
from service.settings import BaseModelEntry, Settings
from tests.conftest import ARTIFACTS, DATASETS
from tests.support.data import QUESTIONS, jsonl
from tests.support.live import serve
from tests.support.processes import start_runner

pytestmark = pytest.mark.slow
CODE_WORD = "PELICAN-7"
TUNEDOCK = str(Path(sys.executable).with_name("tunedock"))
# The 8 round-trip prompts: the taught question in several wordings, and unrelated ones.
PROMPTS = [*QUESTIONS[:4], "What is the capital of France?", "Name a colour.",
           "Write one word that rhymes with cat.", "What is 2 + 2?"]


def code_word_rows(n: int) -> list[dict]:
    return [{"messages": [{"role": "user", "content": f"{QUESTIONS[i % len(QUESTIONS)]} (#{i})"},
                          {"role": "assistant", "content": f"The code word is {CODE_WORD}."}]}
            for i in range(n)]


class Trained:
    def __init__(self, settings: Settings, url: str, keys: dict[str, str], job: tunedock.Job,
                 runner: subprocess.Popen, log: Path, tmp: Path) -> None:
        self.settings, self.url, self.keys, self.job = settings, url, keys, job
        self.runner, self.log, self.tmp = runner, log, tmp
        self.client = tunedock.Client(url, keys["acme"], timeout=120)
        self._merged: tuple[object, list[list[int]]] | None = None

    def merged(self, tokenizer) -> tuple[object, list[list[int]]]:  # noqa: ANN001
        """The merged_16bit export loaded in float32, and its greedy answers to PROMPTS."""
        if self._merged is None:
            import torch
            from transformers import AutoModelForCausalLM

            folder = self.tmp / "merged"
            with tarfile.open(self.download(self.export("merged_16bit"))) as tar:
                tar.extractall(folder, filter="data")
            model = AutoModelForCausalLM.from_pretrained(next(folder.iterdir()), dtype=torch.float32)
            self._merged = model, _greedy(model, tokenizer)
        return self._merged

    def export(self, fmt: str, checkpoint: int | None = None) -> tunedock.Export:
        created = self.client.exports.create(self.job.id, format=fmt, checkpoint=checkpoint)
        try:
            return self.client.exports.wait(created.id, progress=False, timeout=600)
        except tunedock.ExportFailed as exc:
            raise AssertionError(f"{exc}\n{self.log.read_text()[-3000:]}") from None

    def download(self, export: tunedock.Export) -> Path:
        return self.client.exports.download(export.id, self.tmp / export.filename, progress=False)


@pytest.fixture(scope="module")
def trained(s3_endpoint: str, smollm2_dir: Path, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[Trained]:
    tmp = tmp_path_factory.mktemp("exports")
    settings = Settings(
        database_url=f"sqlite+aiosqlite:///{tmp}/tunedock.db", data_dir=str(tmp / "data"),
        s3_endpoint_url=s3_endpoint, s3_access_key_id="test", s3_secret_access_key="test",
        artifact_bucket=ARTIFACTS, readable_buckets=(DATASETS,),
        base_models=(BaseModelEntry(alias="smollm2", source=str(smollm2_dir)),),
        log_json=False, log_level="warning", lease_seconds=6.0, heartbeat_seconds=1.0,
        poll_seconds=0.3, cancel_grace_seconds=3.0)
    log = tmp / "runner.log"
    with serve(settings) as (url, keys):
        client = tunedock.Client(url, keys["acme"])
        upload = client.files.upload(jsonl(code_word_rows(40)), filename="codeword.jsonl")
        job = client.jobs.create(base_model="smollm2", training_file=upload.id, suffix="codeword",
                                 hyperparameters={"n_epochs": 2, "learning_rate": 2e-3,
                                                  "batch_size": 4, "max_seq_length": 128},
                                 deploy=False)
        trained = Trained(settings, url, keys, job, start_runner(settings, log), log, tmp)
        try:
            try:
                trained.job = client.jobs.wait(job.id, progress=False, timeout=900)
            except tunedock.JobFailed as exc:
                raise AssertionError(f"{exc}\n{log.read_text()[-3000:]}") from None
            yield trained
        finally:
            trained.runner.terminate()
            trained.runner.wait(60)


def _adapter(trained: Trained, s3, dest: Path) -> Path:  # noqa: ANN001
    prefix = f"jobs/{trained.job.id}/adapter/"
    for obj in s3.list_objects_v2(Bucket=ARTIFACTS, Prefix=prefix)["Contents"]:
        (dest / obj["Key"][len(prefix):]).parent.mkdir(parents=True, exist_ok=True)
        s3.download_file(ARTIFACTS, obj["Key"], str(dest / obj["Key"][len(prefix):]))
    return dest


def _chat_ids(tokenizer, prompt: str) -> list[int]:  # noqa: ANN001
    text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                         add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _greedy(model, tokenizer, n: int = 16) -> list[list[int]]:  # noqa: ANN001
    """Greedy answers (token ids, up to the end of turn) to PROMPTS."""
    import torch

    answers = []
    for prompt in PROMPTS:
        ids = _chat_ids(tokenizer, prompt)
        with torch.no_grad():
            out = model.generate(input_ids=torch.tensor([ids]), do_sample=False, max_new_tokens=n,
                                 eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
                                 pad_token_id=0)
        answers.append(out[0, len(ids):].tolist())
    return answers


def _logits(model, sequences: list[list[int]]):  # noqa: ANN001, ANN202
    import torch

    with torch.no_grad():
        return [model(torch.tensor([s])).logits[0].float() for s in sequences]


def test_merged_16bit_answers_like_base_plus_adapter(trained: Trained, s3, smollm2_dir) -> None:  # noqa: ANN001
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    export = trained.export("merged_16bit")
    assert export.checks.merged_same_greedy and export.checks.merged_max_logit_diff is not None
    path = trained.download(export)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == export.sha256
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    merged, got = trained.merged(tokenizer)
    merged_dir = next((trained.tmp / "merged").iterdir())
    names = {p.name for p in merged_dir.iterdir()}
    assert {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json",
            "tokenizer_config.json", "chat_template.jinja"} <= names, names
    assert json.loads((merged_dir / "config.json").read_text())["dtype"] == "bfloat16"
    assert "quantization_config" not in json.loads((merged_dir / "config.json").read_text())

    base = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32)
    tuned = PeftModel.from_pretrained(base, _adapter(trained, s3, trained.tmp / "adapter"))
    want = _greedy(tuned, tokenizer)
    assert got == want
    texts = [tokenizer.decode(a, skip_special_tokens=True) for a in got]
    assert all(CODE_WORD in t for t in texts[:4]), texts
    sequences = [_chat_ids(tokenizer, p) + a for p, a in zip(PROMPTS, want)]
    reference = _logits(tuned, sequences)
    diff = max((a - b).abs().max().item() for a, b in zip(reference, _logits(merged, sequences)))
    # The issue asks for 1e-2. bf16 keeps 8 significant bits, so W + BA rounded to it cannot be
    # that close to base + adapter in float32; the bound that means something is what base +
    # adapter computed in bf16 (as LoRA serving does) is off by. The merge itself, before the
    # cast, is within 1e-2 (tests/unit/test_exports.py).
    served = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.bfloat16),
        trained.tmp / "adapter", autocast_adapter_dtype=False)
    floor = max((a - b).abs().max().item() for a, b in zip(reference, _logits(served, sequences)))
    print(f"\nmerged_16bit: {export.bytes / 1e6:.1f} MB in {export.seconds:.1f} s; largest logit "
          f"difference vs base + adapter (float32) on {len(PROMPTS)} prompts: {diff:.4f} (1e-2 "
          f"{'met' if diff <= 1e-2 else 'not met'}); base + adapter in bf16: {floor:.4f}; the "
          f"export's own check: {export.checks.merged_max_logit_diff} vs "
          f"{export.checks.served_16bit_max_logit_diff}")
    assert diff <= floor


def test_gguf_f16_loads_back_with_the_same_greedy_answers(trained: Trained, smollm2_dir) -> None:  # noqa: ANN001
    import torch
    from gguf import GGUFReader
    from transformers import AutoModelForCausalLM, AutoTokenizer

    export = trained.export("gguf_f16")
    assert export.checks.gguf_tokens_match and export.checks.gguf_eos == "<|im_end|>"
    path = trained.download(export)
    fields = GGUFReader(path).fields
    assert fields["tokenizer.ggml.model"].contents() == "gpt2"  # byte-level BPE, as the base
    assert "<|im_start|>" in fields["tokenizer.chat_template"].contents()
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert fields["tokenizer.ggml.eos_token_id"].contents() == eos
    loaded = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    # The same greedy answers as the merged model this GGUF was made from (merged_16bit).
    assert _greedy(loaded, tokenizer) == trained.merged(tokenizer)[1]
    print(f"\ngguf_f16: {export.bytes / 1e6:.1f} MB in {export.seconds:.1f} s")


def test_cli_exports_gguf_q8_0_that_still_answers_the_fact(trained: Trained, smollm2_dir) -> None:  # noqa: ANN001
    from transformers import AutoTokenizer

    from service.exports.llama_cpp import Model

    out = trained.tmp / "cli" / "model.gguf"
    out.parent.mkdir()
    env = {**os.environ, "TUNEDOCK_BASE_URL": trained.url, "TUNEDOCK_API_KEY": trained.keys["acme"]}
    done = subprocess.run([TUNEDOCK, "export", trained.job.id, "--format", "gguf_q8_0", "-o", str(out)],
                          env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, (done.stdout, done.stderr[-2000:], trained.log.read_text()[-2000:])
    print(f"\n$ tunedock export {trained.job.id} --format gguf_q8_0 -o {out}\n{done.stdout}")
    assert "gguf_tokens_match True" in done.stdout and "%|" in done.stderr  # the progress bars
    export = trained.client.exports.list(trained.job.id)
    q8 = next(e for e in export if e.format == "gguf_q8_0")
    assert hashlib.sha256(out.read_bytes()).hexdigest() == q8.sha256
    modelfile = (out.parent / "Modelfile").read_text()
    assert "FROM ./model.gguf" in modelfile and 'PARAMETER stop "<|im_end|>"' in modelfile
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    with Model(out) as model:  # llama.cpp, with the GGUF's own tokenizer
        prompts = [model.tokenize(tokenizer.apply_chat_template(
            [{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True))
            for p in PROMPTS[:4]]
        answers = [tokenizer.decode(a) for a in model.generate(prompts, 16)]
    print(f"llama.cpp, gguf_q8_0: {answers}")
    assert all(CODE_WORD in a for a in answers), answers


def test_gguf_q4_k_m_is_llama_cpp_4_bit_mix_and_loads(trained: Trained, smollm2_dir) -> None:  # noqa: ANN001
    from gguf import GGMLQuantizationType, GGUFReader
    from transformers import AutoTokenizer

    from service.exports.llama_cpp import Model

    export = trained.export("gguf_q4_k_m")
    f16 = trained.export("gguf_f16")
    assert export.bytes < f16.bytes * 0.5
    path = trained.download(export)
    reader = GGUFReader(path)
    assert reader.fields["general.file_type"].contents() == 15  # LLAMA_FTYPE_MOSTLY_Q4_K_M
    kinds = {t.tensor_type for t in reader.tensors}
    assert {GGMLQuantizationType.Q4_K, GGMLQuantizationType.Q6_K} <= kinds, kinds
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    with Model(path) as model:
        ids = model.tokenize(tokenizer.apply_chat_template(
            [{"role": "user", "content": PROMPTS[0]}], tokenize=False, add_generation_prompt=True))
        [answer] = model.generate([ids], 16)
    print(f"\ngguf_q4_k_m: {export.bytes / 1e6:.1f} MB in {export.seconds:.1f} s; llama.cpp: "
          f"{tokenizer.decode(answer)!r}")
    assert answer


GO_RENDER = r'''
package main

import (
	"encoding/json"
	"os"
	"text/template"
)

type Message struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

func main() {
	var in struct {
		Template string      `json:"template"`
		Chats    [][]Message `json:"chats"`
	}
	if err := json.NewDecoder(os.Stdin).Decode(&in); err != nil {
		panic(err)
	}
	t := template.Must(template.New("m").Parse(in.Template))
	out := []string{}
	for _, chat := range in.Chats {
		var b []byte
		w := &buf{&b}
		if err := t.Execute(w, map[string]any{"Messages": chat}); err != nil {
			panic(err)
		}
		out = append(out, string(b))
	}
	json.NewEncoder(os.Stdout).Encode(out)
}

type buf struct{ b *[]byte }

func (w *buf) Write(p []byte) (int, error) { *w.b = append(*w.b, p...); return len(p), nil }
'''


def _modelfile_parts(text: str) -> tuple[str, str | None]:
    template = text.split('TEMPLATE """', 1)[1].split('"""', 1)[0]
    system = text.split('SYSTEM """', 1)[1].split('"""', 1)[0] if 'SYSTEM """' in text else None
    return template, system


def test_modelfile_template_renders_chats_like_the_base_template(trained: Trained, smollm2_dir,
                                                                 tmp_path) -> None:  # noqa: ANN001
    from transformers import AutoTokenizer

    go = shutil.which("go")
    assert go, "Go (Debian's golang-go; `make test` installs it: scripts/system-deps.sh) renders Ollama's template language"
    export = trained.export("gguf_f16")
    assert export.checks.modelfile_template_matches
    template, system = _modelfile_parts(trained.client.exports.modelfile(export.id))
    chats = [
        [{"role": "user", "content": "What is the secret code word?"}],
        [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi"}],
        [{"role": "user", "content": "One"}, {"role": "assistant", "content": "Two"},
         {"role": "user", "content": "Three {{ not a template }} \"quoted\"\nnew line"}],
        [{"role": "system", "content": "S"}, {"role": "user", "content": "a"},
         {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}],
    ]
    # Ollama puts the Modelfile's SYSTEM first when a chat brings no system message.
    with_system = [c if c[0]["role"] == "system" or system is None
                   else [{"role": "system", "content": system}, *c] for c in chats]
    (tmp_path / "render.go").write_text(GO_RENDER)
    env = {**os.environ, "GOCACHE": str(tmp_path / "gocache"), "GOPATH": str(tmp_path / "gopath"),
           "GO111MODULE": "off"}
    done = subprocess.run([go, "run", str(tmp_path / "render.go")], capture_output=True, text=True,
                          input=json.dumps({"template": template, "chats": with_system}), env=env,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    rendered = json.loads(done.stdout)
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    want = [tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in chats]
    assert rendered == want


def test_download_ranges_tenants_and_bad_requests(trained: Trained) -> None:
    export = trained.export("gguf_q8_0")
    url, auth = trained.url, {"Authorization": f"Bearer {trained.keys['acme']}"}
    other = {"Authorization": f"Bearer {trained.keys['globex']}"}
    with httpx.Client(base_url=url, timeout=60) as http:
        whole = http.get(f"/exports/{export.id}/content", headers=auth)
        assert whole.status_code == 200 and len(whole.content) == export.bytes
        assert whole.headers["accept-ranges"] == "bytes"
        assert whole.headers["content-disposition"] == f'attachment; filename="{export.filename}"'
        part = http.get(f"/exports/{export.id}/content", headers={**auth, "Range": "bytes=100-1099"})
        assert part.status_code == 206 and part.content == whole.content[100:1100]
        assert part.headers["content-range"] == f"bytes 100-1099/{export.bytes}"
        tail = http.get(f"/exports/{export.id}/content", headers={**auth, "Range": "bytes=-10"})
        assert tail.status_code == 206 and tail.content == whole.content[-10:]
        bad = http.get(f"/exports/{export.id}/content", headers={**auth, "Range": f"bytes={export.bytes}-"})
        assert bad.status_code == 416 and bad.json()["error"]["code"] == "range_not_satisfiable"
        # Another tenant's export is answered like one that does not exist.
        for path in (f"/exports/{export.id}", f"/exports/{export.id}/content",
                     f"/exports/{export.id}/modelfile", f"/jobs/{trained.job.id}/exports"):
            r = http.get(path, headers=other)
            assert r.status_code == 404 and r.json()["error"]["code"] == "not_found", (path, r.text)
        r = http.post(f"/jobs/{trained.job.id}/exports", json={"format": "gguf_q8_0"}, headers=other)
        assert r.status_code == 404
        # Asking again gives the same export.
        again = http.post(f"/jobs/{trained.job.id}/exports", json={"format": "gguf_q8_0"}, headers=auth)
        assert again.status_code == 200 and again.json()["id"] == export.id
        r = http.post(f"/jobs/{trained.job.id}/exports", json={"format": "gguf_q3"}, headers=auth)
        assert r.status_code == 400 and r.json()["error"]["param"] == "format", r.text
        r = http.post(f"/jobs/{trained.job.id}/exports", json={"format": "gguf_f16", "checkpoint": 9},
                      headers=auth)
        assert r.status_code == 404 and r.json()["error"]["param"] == "checkpoint", r.text
        assert "it has [1, 2]" in r.json()["error"]["message"]
        r = http.post(f"/jobs/{trained.job.id}/exports", json={"format": "gguf_f16", "extra": 1},
                      headers=auth)
        assert r.status_code == 400
        created = trained.client.jobs.create(base_model="smollm2", training_file=trained.job.training_file,
                                             deploy=False)
        trained.client.jobs.cancel(created.id)
        r = http.post(f"/jobs/{created.id}/exports", json={"format": "gguf_f16"}, headers=auth)
        assert r.status_code == 409 and r.json()["error"]["code"] == "job_not_succeeded", r.text
        merged = trained.export("merged_16bit")
        r = http.get(f"/exports/{merged.id}/modelfile", headers=auth)
        assert r.status_code == 404 and "has no Modelfile" in r.json()["error"]["message"]


def test_export_survives_a_killed_runner(trained: Trained) -> None:
    """A runner SIGKILLed in the middle of an export: its lease lapses, another runner claims the
    export again (attempt 2) and finishes it."""
    created = trained.client.exports.create(trained.job.id, format="merged_16bit", checkpoint=1)
    deadline = time.monotonic() + 120
    while (e := trained.client.exports.get(created.id)).stage not in ("merging", "uploading"):
        assert time.monotonic() < deadline, e
        time.sleep(0.1)
    trained.runner.kill()
    trained.runner.wait(30)
    trained.runner = start_runner(trained.settings, trained.log)
    done = trained.client.exports.wait(created.id, progress=False, timeout=600)
    assert done.status == "succeeded" and done.attempt == 2 and done.model.endswith(":ckpt-1")
    events = [e for e in trained.client.jobs.events(trained.job.id) if e.type == "export"
              and e.data.get("export_id") == created.id]
    assert any("lost its lease" in e.message for e in events), [e.message for e in events]
