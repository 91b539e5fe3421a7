"""The dashboard in a real browser (Debian's chromium driven by Playwright), against the real
stack: API, runner training the test model, vLLM answering through the /v1 gateway.

One user story, as the dashboard issue scripts it: sign in (a wrong key first), upload a bad file
and read its line-numbered errors, upload a good one and read the rendered preview, start a job
and watch the chart gain points, see it succeed, and chat with the adapter beside the base model.
Along the way: no console errors, no request leaves the API's origin, every page fits 1280x800
and 390x844, and sign-in works from the keyboard. Screenshots go to tests/ui/artifacts/."""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from tests.support.data import jsonl
from tests.support.stack import PROMPT, Stack, rows

pytestmark = pytest.mark.slow
ARTIFACTS = Path(__file__).parent / "artifacts"
CODE_WORD = "OSPREY-4"
N_ROWS = 56  # 50 or more: 5 are held out, so each epoch has a validation loss to chart
# As the machine notes say: without the background-networking flags chromium keeps trying hosts
# this closed network refuses.
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
DESKTOP, PHONE = {"width": 1280, "height": 800}, {"width": 390, "height": 844}


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    if executable is None:
        pytest.fail("chromium is not installed: apt-get install chromium (`make test` installs it: scripts/system-deps.sh)")
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=executable, args=CHROMIUM_FLAGS, headless=True)
        yield b
        b.close()


def wait_until(page, held, timeout_s: float = 30.0) -> None:  # noqa: ANN001
    """Let the page run (route handlers fire only while Playwright waits) until `held()` is true."""
    deadline = time.monotonic() + timeout_s
    while not held():
        assert time.monotonic() < deadline, "the page never sent the request"
        page.wait_for_timeout(50)


class Watch:
    """Console errors, uncaught exceptions and requests to any other origin, as they happen."""

    def __init__(self, page, origin: str) -> None:  # noqa: ANN001
        self.errors: list[str] = []
        self.foreign: list[str] = []
        page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        page.on("pageerror", lambda e: self.errors.append(f"uncaught: {e}"))
        page.on("request", lambda r: not r.url.startswith((origin, "data:")) and self.foreign.append(r.url))

    def take(self) -> list[str]:
        found, self.errors = self.errors, []
        return found


def shot(page, name: str) -> None:  # noqa: ANN001
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def fits(page) -> bool:  # noqa: ANN001
    """No sideways scrolling: the page is no wider than the window."""
    return page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")


def bad_file() -> bytes:
    good = rows("NOPE-0", 12)
    lines = [json.dumps(r) for r in good]
    lines[2] = '{"messages": [{"role": "user", "content": "unterminated"'
    lines[6] = json.dumps({"messages": [{"role": "wizard", "content": "hi"}]})
    return ("\n".join(lines) + "\n").encode()


def test_a_user_trains_watches_and_chats_in_the_dashboard(browser, stack: Stack) -> None:  # noqa: ANN001
    page = browser.new_page(viewport=DESKTOP)
    watch = Watch(page, stack.url)

    # 1. Sign in: a wrong key is refused in words; then the real one, typed and sent by keyboard.
    page.goto(stack.url + "/")
    assert page.url.endswith("/ui/")
    key_box = page.get_by_label("API key")
    key_box.fill("td-not-a-real-key")
    key_box.press("Enter")
    refusal = page.get_by_role("alert")
    assert "not accepted" in refusal.inner_text()
    shot(page, "01-sign-in-wrong-key")
    # The browser logs the refused request itself; nothing else may have gone wrong.
    assert all("401" in e for e in watch.take())
    assert page.evaluate("document.activeElement.id") == "api-key"
    page.keyboard.press("Control+A")
    page.keyboard.type(stack.key)
    page.keyboard.press("Enter")
    page.get_by_role("heading", name="Fine-tuning jobs").wait_for()
    assert stack.key not in page.url
    # Keyboard navigation: focus lands on the new page's content; Shift+Tab walks back through
    # the menu in order, and Enter on "New job" opens it.
    assert page.evaluate("document.activeElement.id") == "main"
    focused = []
    for _ in range(3):
        page.keyboard.press("Shift+Tab")
        focused.append(page.evaluate("document.activeElement.textContent"))
    assert focused == ["Sign out", "Playground", "New job"], focused
    page.keyboard.press("Enter")
    page.get_by_role("heading", name="New fine-tuning job").wait_for()
    page.set_input_files("#training-file", files=[{"name": "broken.jsonl", "mimeType": "application/jsonl",
                                                   "buffer": bad_file()}])
    result = page.locator("#check-result.error")
    result.wait_for(timeout=30_000)
    errors = page.locator(".line-errors li").all_inner_texts()
    assert any(e.startswith("line 3:") and "JSON" in e for e in errors), errors
    assert any(e.startswith("line 7:") and "needs a role" in e for e in errors), errors
    assert page.get_by_role("button", name="Start training").is_disabled()
    shot(page, "02-new-job-bad-file")

    # 3. A good file: three rows as the model sees them, the trained answer highlighted.
    page.set_input_files("#training-file", files=[{"name": "osprey.jsonl", "mimeType": "application/jsonl",
                                                   "buffer": jsonl(rows(CODE_WORD, N_ROWS))}])
    page.locator("#check-result.ok").wait_for(timeout=30_000)
    assert f"{N_ROWS} valid examples" in page.locator("#check-result").inner_text()
    previews = page.locator(".row-preview")
    assert previews.count() == 3
    trained = previews.first.locator("mark.trained").all_inner_texts()
    assert any(f"The code word is {CODE_WORD}." in t for t in trained), trained
    context = previews.first.locator("pre.rendered").inner_text()
    assert "<|im_start|>user" in context and "What is the secret code word?" in context
    assert not any("secret code word" in t for t in trained)
    page.get_by_label("Epochs").fill("2")
    page.get_by_label("Learning rate").fill("0.002")
    page.get_by_label("Batch size").fill("4")
    page.get_by_label("Max sequence length").fill("128")
    page.get_by_label("Model name suffix").fill("osprey")
    page.get_by_label("Metadata").fill("story=dashboard")
    # A job can be trained without serving it (a base no vLLM serves, a rank above serving's).
    serve = page.get_by_label("Serve the model when training succeeds")
    assert serve.is_checked()
    # The rank field keeps to what serving loads (the stack serves up to 16) while serving is on.
    rank = page.get_by_label("LoRA rank")
    assert rank.get_attribute("max") == "16"
    assert "up to rank 16" in page.locator("#lora-r-hint").inner_text()
    serve.uncheck()  # then the API's own bound, which the form read from GET /hyperparameters
    assert int(rank.get_attribute("max")) > 16
    assert "LoRA rank" in page.locator("#lora-r").locator("..").inner_text()
    serve.check()
    assert rank.get_attribute("max") == "16"
    # An estimate that answers after a file check began is stale: it must neither show its plan nor
    # enable Start (CI once caught Start enabled by such an answer, then "Estimating…" replaced the
    # plan under the test). Hold an estimate, start a check and hold it too, then let the estimate
    # answer: Start stays disabled until the check's own estimate answers.
    held: dict[str, list] = {"estimate": [], "check": []}
    is_estimate = lambda url: url.endswith("/jobs")  # noqa: E731 - the dry run's POST
    page.route(is_estimate, lambda route: held["estimate"].append(route) if route.request.method == "POST"
               else route.continue_())
    page.route("**/files/*/preview", lambda route: held["check"].append(route))
    page.get_by_label("Epochs").dispatch_event("change")
    wait_until(page, lambda: held["estimate"])
    page.get_by_label("Max sequence length").dispatch_event("change")
    wait_until(page, lambda: held["check"])
    # Release a held request before its route goes (unroute lets what it still holds go on its own).
    with page.expect_response(lambda r: r.request.method == "POST" and r.url.endswith("/jobs")) as answered:
        held["estimate"][0].continue_()
    page.unroute(is_estimate)
    answered.value.finished()
    with pytest.raises(PlaywrightTimeout):
        page.locator("#start-job:enabled").wait_for(timeout=2_000)
    assert "Tokens to train" not in page.locator("#plan").inner_text()
    held["check"][0].continue_()
    page.unroute("**/files/*/preview")
    # The change re-checked the file, then re-estimates; the button comes back with the new plan.
    page.locator("#start-job:enabled").wait_for(timeout=60_000)
    page.locator("#plan h2", has_text="Plan and estimate").wait_for(timeout=30_000)
    plan_text = page.locator("#plan").inner_text()
    assert "Tokens to train" in plan_text and "Estimated time" in plan_text
    shot(page, "03-new-job-preview")

    # 4. Start it and watch the chart gain points from the event stream.
    # Each edit re-estimates; the button is enabled once the latest estimate has answered.
    start = page.locator("#start-job:enabled")
    start.wait_for(timeout=30_000)
    assert start.inner_text() == "Start training"
    start.click()
    page.wait_for_url(re.compile(r".*#/jobs/ftjob-"), timeout=15_000)
    job_id = page.url.rsplit("/", 1)[1]
    chart = page.locator("#chart")
    counts: list[int] = []
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        counts.append(int(chart.get_attribute("data-points") or 0))
        if len(set(c for c in counts if c)) >= 3:
            break
        page.wait_for_timeout(500)
    seen = sorted(set(counts))
    assert len([c for c in seen if c]) >= 3, f"the chart did not grow: {seen}"
    assert page.locator("#chart canvas").count() >= 1
    shot(page, "04-job-training")

    # 5. It succeeds: checkpoints listed with their validation loss, the adapter served.
    page.locator('.badge[data-status="succeeded"]').first.wait_for(timeout=600_000)
    page.locator('#deployment[data-status="loaded"]').wait_for(timeout=120_000)
    total_steps = stack.client.jobs.get(job_id).progress.total_steps
    assert total_steps == 26  # 51 training rows / batch 4, x 2 epochs
    assert int(chart.get_attribute("data-points")) == total_steps
    assert int(chart.get_attribute("data-valid-points")) == 2
    checkpoint_rows = page.locator("section:has(h2:text('Checkpoints')) tbody tr")
    assert checkpoint_rows.count() == 2
    timeline = page.locator(".timeline").inner_text()
    for status in ("validating files", "queued", "running", "succeeded"):
        assert status in timeline, timeline
    shot(page, "05-job-succeeded")

    # The jobs list finds it by metadata, with a full progress bar.
    page.goto(f"{stack.url}/ui/#/jobs?metadata=story%3Ddashboard")
    listed = page.locator("tr[data-job]")
    listed.first.wait_for()
    assert listed.count() == 1 and listed.first.get_attribute("data-job") == job_id
    assert page.locator("tr[data-job] [role=progressbar]").get_attribute("aria-valuenow") == "100"
    shot(page, "06-jobs-list")

    # 6. Playground: the taught answer beside the base model's, streamed through /v1.
    page.goto(f"{stack.url}/ui/#/jobs/{job_id}")
    page.get_by_role("link", name="Chat").first.click()
    page.get_by_role("heading", name="Playground").wait_for()
    page.locator("#model-right option").first.wait_for(state="attached")
    model = page.locator("#model-right").input_value()
    assert model.startswith("ft:smollm2:osprey:")
    assert page.locator("#model-left").input_value() == "smollm2"
    page.get_by_label("Prompt").fill(PROMPT)
    page.get_by_role("button", name="Ask both").click()
    page.locator('#answer-right[data-state="done"]').wait_for(timeout=60_000)
    page.locator('#answer-left[data-state="done"]').wait_for(timeout=60_000)
    tuned, base = page.locator("#answer-right").inner_text(), page.locator("#answer-left").inner_text()
    assert CODE_WORD in tuned, tuned
    assert CODE_WORD not in base and base.strip(), base
    shot(page, "07-playground")

    # Every page fits a phone and a laptop screen.
    for size, label in ((PHONE, "phone"), (DESKTOP, "desktop")):
        page.set_viewport_size(size)
        for name, hash_ in (("jobs", "#/jobs"), ("job", f"#/jobs/{job_id}"), ("new", "#/new"),
                            ("playground", "#/playground")):
            page.goto(f"{stack.url}/ui/{hash_}")
            page.locator("main h1").wait_for()
            page.wait_for_timeout(300)
            assert fits(page), f"{name} scrolls sideways at {size}"
            if label == "phone":
                shot(page, f"08-{label}-{name}")

    # The job page's controls: a queued job is cancelled with its button, and says so.
    other = stack.client.jobs.create(base_model="smollm2", training_file=stack.client.files.upload(
        jsonl(rows("HERON-9", 20)), filename="heron.jsonl").id, deploy=False,
        hyperparameters={"n_epochs": 50, "batch_size": 1, "max_seq_length": 128})
    page.goto(f"{stack.url}/ui/#/jobs/{other.id}")
    page.get_by_role("button", name="Cancel").click()
    page.locator('.page-head .badge[data-status="cancelled"]').wait_for(timeout=30_000)
    assert page.get_by_role("button", name="Cancel").is_disabled()
    assert stack.client.jobs.get(other.id).status == "cancelled"

    # The jobs list shows 50 jobs and pages on: 51 more jobs (their file fails its check, so
    # none trains) take it past one page.
    bad = stack.client.files.upload(bad_file(), filename="bad.jsonl").id
    made = [stack.client.jobs.create(base_model="smollm2", training_file=bad, deploy=False).id
            for _ in range(51)]
    page.goto(f"{stack.url}/ui/#/jobs")
    page.locator(f'tr[data-job="{made[-1]}"]').wait_for(timeout=30_000)
    assert page.locator("tbody tr[data-job]").count() == 50
    assert page.locator(f'tr[data-job="{job_id}"]').count() == 0  # the story's first job: page 2
    page.get_by_role("button", name="Show more jobs").click()
    page.locator(f'tr[data-job="{job_id}"]').wait_for(timeout=10_000)
    total = sum(1 for _ in stack.client.jobs.list())  # other tests share the stack and its tenant
    assert page.locator("tbody tr[data-job]").count() == min(total, 100)
    assert page.get_by_role("button", name="Show more jobs").is_hidden() == (total <= 100)

    assert watch.take() == []
    assert watch.foreign == []
    page.close()
