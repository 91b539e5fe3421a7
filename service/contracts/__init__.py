"""Contracts: the types that cross a process boundary, at the bottom of the import graph.

schema.py: the API's wire types (requests, answers, hyperparameters, the memory plan, the
dataset summary, deployment specs and reports for the serving side). messages.py: what the
runner hands a training or export child (its spec) and what the child says back, one JSON line
each. adapter_check.py: the record stored with each adapter that the serving side checks the
served adapter against. graders.py: OpenAI's grader shapes, which a job's eval carries to
the training child. Every layer may import these; they import nothing of tunedock's
(tests/lint/test_imports.py holds that, and that no package or module imports in a cycle).
"""
