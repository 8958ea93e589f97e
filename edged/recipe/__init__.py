"""Building model packages (`edged models build`): a Qwen3.5 checkpoint, or the tiny random
one, converted to an ONNX Runtime GenAI package. Needs the build extra; a device never imports it."""
