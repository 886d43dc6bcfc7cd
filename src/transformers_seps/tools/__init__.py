"""Publishing tools: converting the SEPS authors' checkpoints (`convert_official`), writing Hub repo folders
(`publish`) and model cards (`model_card`). Nothing in the model library or the runners imports this package."""
