"""Graders: OpenAI's shapes (string_check, text_similarity, python, score_model, multi), checked
before use and run on one model sample against one dataset item.

service/contracts/graders.py (the types, as OpenAI's API takes and answers them; at the bottom,
since a job's eval carries a grader to the training child) → template.py (`{{sample.…}}`,
`{{item.…}}`) → metrics.py (string checks and similarity, with rapidfuzz, sacrebleu,
rouge-score and nltk) / embeddings.py (`cosine`, from an embedding model's server) /
formula.py (a multi grader's `calculate_output`) / sandbox.py (a python grader in its own
limited process) → service.py (validate and run; score_model asks a model this
tunedock serves, through the gateway's tenant check) → routes.py (native and /v1 side by side)."""
