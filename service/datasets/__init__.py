"""Training data: format detection and checks (formats), streaming validation (validate),
rendering to training text (render, used by the training child)."""
