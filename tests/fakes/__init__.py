"""Fakes of outside services the tests talk to over the network, on 127.0.0.1: `hub` (the Hugging Face Hub)."""
