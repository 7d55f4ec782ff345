"""Where models come from: the committed baselines (safetensors and a card each), models users add
(state_dicts, ONNX, and programs only with explicit trust), the formats told apart from their bytes, and
archives opened safely."""
