"""Deployments: which adapters vLLM should serve and how each replica did; service.py holds their
SQL (a repository inside its service) and the one transition function."""
