"""The stateful engine: Qwen3.5 ONNX packages run with the model's state as a value."""
