"""Training and evaluation runners and their data: the argument dataclasses (`arguments`, importable without torch),
the training loop (`training`), checkpoints and run records (`checkpoints`), the backbones that need no download
(`backbones`), the evaluation runner (`evaluation`), the authors' data layout and the synthetic benchmark (`data`).

The model library (`transformers_seps`) never imports this package.
"""
