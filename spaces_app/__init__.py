"""The Gradio Space: app.py, its card (README.md) and requirements.txt; it serves through the engine serving/textgen/."""
