"""Serving VictorianGPT: the Gradio Space and a Text Generation Inference-protocol server."""
