"""Serving: `python -m serving` supervises vLLM's OpenAI server for one base model (vllm), loads
the adapters of succeeded jobs into it and keeps vLLM's set equal to the service's (deployer), and
a vLLM LoRA resolver plugin that pulls unknown `ft:` adapters from S3 on new replicas (resolver)."""
