"""Eval samples: each epoch's adapter answers a few prompts greedily, inside the training child,
before its checkpoint is recorded, so a user sees the answers change epoch by epoch."""

from __future__ import annotations

from typing import Any

from service.datasets.formats import Chat, Pair, Preference, detect_format, parse_example
from service.datasets.template import HFTokens
from service.contracts.messages import TrainingSpec

MAX_NEW_TOKENS = 64


def eval_prompts(spec: TrainingSpec, tokens: HFTokens, validation_rows: list[dict]
                 ) -> list[tuple[str, list[int]]]:
    """(what the user sees as the prompt, the ids the model is given) for each eval prompt."""
    hp = spec.hyperparameters
    out = []
    if hp.eval_prompts:
        for prompt in hp.eval_prompts:
            messages = [{"role": "user", "content": prompt}]
            out.append((prompt, tokens.encode(tokens.render(messages, None, True))))
        return out
    for row in validation_rows:
        if len(out) == hp.eval_samples:
            break
        example = parse_example(row, detect_format(row))
        if isinstance(example, Chat):
            last = max(i for i, m in enumerate(example.messages) if m["role"] == "assistant")
            context = example.messages[:last]
            if not context:
                continue
            shown = next((m["content"] for m in reversed(context) if m["role"] == "user"), "")
            ids = tokens.encode(tokens.render(context, example.tools, True))
            out.append((shown, ids))
        elif isinstance(example, Pair):
            out.append((example.prompt, tokens.encode(example.prompt)))
        elif isinstance(example, Preference):  # DPO: the prompt both answers follow
            if isinstance(example.prompt, str):
                out.append((example.prompt, tokens.encode(example.prompt)))
            else:
                chat = example.prompt
                shown = next((m["content"] for m in reversed(chat.messages) if m["role"] == "user"), "")
                out.append((shown, tokens.encode(tokens.render(chat.messages, chat.tools, True))))
    return out


class Sampler:
    def __init__(self, prompts: list[tuple[str, list[int]]], tokenizer: Any, backend: str) -> None:
        self.prompts = prompts
        self.tokenizer = tokenizer
        self.backend = backend

    def answer(self, model: Any) -> list[dict[str, str]]:
        import torch

        if self.backend == "unsloth":
            from unsloth import FastLanguageModel

            FastLanguageModel.for_inference(model)
        was_training = model.training
        model.eval()
        answers = []
        try:
            with torch.no_grad():
                for shown, ids in self.prompts:
                    x = torch.tensor([ids], device=model.device)
                    y = model.generate(input_ids=x, attention_mask=torch.ones_like(x),
                                       max_new_tokens=MAX_NEW_TOKENS, do_sample=False,
                                       pad_token_id=self.tokenizer.pad_token_id)
                    text = self.tokenizer.decode(y[0, len(ids):], skip_special_tokens=True)
                    answers.append({"prompt": shown, "answer": text.strip()})
        finally:
            if self.backend == "unsloth":
                from unsloth import FastLanguageModel

                FastLanguageModel.for_training(model)
            if was_training:
                model.train()
        return answers
