"""Serving: the generation engine (`textgen`) and its command-line front ends, the TGI-protocol server (`server`,
`victorian-gpt serve`) and `victorian-gpt generate` (`generate`). The Gradio Space (spaces_app/) is the third front
end. See docs/serving.md and docs/generation-engine.md."""
