"""Configuration of VictorianGPT, a GPT-2-style decoder trained from scratch on PG19.

This file is copied into every exported model folder (``trust_remote_code``): it may import only
torch/transformers, never the rest of the ``victorian_gpt`` package.
"""

from transformers import PretrainedConfig

# Named shapes. `gpt2-124m` is the product's model; the smaller ones are for CPU work and tests.
# Only the fields that differ from the defaults of `VictorianGPTConfig.__init__` are spelled here.
PRESETS = {
    "gpt2-124m": dict(n_layer=12, n_embd=768, n_head=12, n_positions=2048, vocab_size=50304),
    "small": dict(n_layer=6, n_embd=384, n_head=6, n_positions=512, vocab_size=8192),
    "tiny": dict(n_layer=2, n_embd=64, n_head=4, n_positions=128, vocab_size=512),
}

AUTO_MAP = {
    "AutoConfig": "configuration_victorian_gpt.VictorianGPTConfig",
    "AutoModel": "modeling_victorian_gpt.VictorianGPTModel",
    "AutoModelForCausalLM": "modeling_victorian_gpt.VictorianGPTForCausalLM",
}


class VictorianGPTConfig(PretrainedConfig):
    r"""Configuration for [`VictorianGPTForCausalLM`]: GPT-2 field names, mapped onto the generic ones.

    Args:
        vocab_size: tokens in the vocabulary (a multiple of 64 keeps the output matmul fast).
        n_positions: context length (learned absolute position embeddings).
        n_embd / n_layer / n_head: width, depth and attention heads; `n_embd % n_head == 0`.
        n_inner: MLP hidden width (default `4 * n_embd`).
        activation_function: `"gelu_new"` (GPT-2's tanh approximation) or `"gelu"` (exact).
        resid_pdrop / embd_pdrop / attn_pdrop: dropout after residual branches, on embeddings, on attention weights.
        layer_norm_epsilon, initializer_range: as in GPT-2.
    """

    model_type = "victorian_gpt"
    keys_to_ignore_at_inference = ["cache", "past_key_values"]
    attribute_map = {
        "hidden_size": "n_embd",
        "max_position_embeddings": "n_positions",
        "num_attention_heads": "n_head",
        "num_hidden_layers": "n_layer",
    }

    def __init__(
        self,
        vocab_size=50304,
        n_positions=2048,
        n_embd=768,
        n_layer=12,
        n_head=12,
        n_inner=None,
        activation_function="gelu_new",
        resid_pdrop=0.2,
        embd_pdrop=0.2,
        attn_pdrop=0.2,
        layer_norm_epsilon=1e-5,
        initializer_range=0.02,
        use_cache=True,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=1,
        tie_word_embeddings=True,
        **kwargs,
    ):
        self.vocab_size = vocab_size
        self.n_positions = n_positions
        self.n_embd = n_embd
        self.n_layer = n_layer
        self.n_head = n_head
        self.n_inner = n_inner
        self.activation_function = activation_function
        self.resid_pdrop = resid_pdrop
        self.embd_pdrop = embd_pdrop
        self.attn_pdrop = attn_pdrop
        self.layer_norm_epsilon = layer_norm_epsilon
        self.initializer_range = initializer_range
        self.use_cache = use_cache
        self._validate_shape()
        # Name all three Auto classes, so an exported folder serves AutoConfig, AutoModel and AutoModelForCausalLM.
        kwargs.setdefault("auto_map", dict(AUTO_MAP))
        super().__init__(
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            pad_token_id=pad_token_id,
            tie_word_embeddings=tie_word_embeddings,
            **kwargs,
        )

    def _validate_shape(self):
        """Reject shapes the model cannot be built with, naming the field and the value."""
        for name in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"VictorianGPTConfig: `{name}` must be a positive integer, got {value!r}")
        if self.n_inner is not None and (not isinstance(self.n_inner, int) or self.n_inner <= 0):
            raise ValueError(f"VictorianGPTConfig: `n_inner` must be a positive integer or None, got {self.n_inner!r}")
        if self.n_embd % self.n_head:
            raise ValueError(
                f"VictorianGPTConfig: `n_embd` ({self.n_embd}) must be divisible by `n_head` ({self.n_head})"
            )
        for name in ("resid_pdrop", "embd_pdrop", "attn_pdrop"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
                raise ValueError(f"VictorianGPTConfig: `{name}` must be in [0, 1), got {value!r}")
        if not self.layer_norm_epsilon > 0:
            raise ValueError(f"VictorianGPTConfig: `layer_norm_epsilon` must be > 0, got {self.layer_norm_epsilon!r}")
        if not self.initializer_range > 0:
            raise ValueError(f"VictorianGPTConfig: `initializer_range` must be > 0, got {self.initializer_range!r}")
        if self.activation_function not in ("gelu_new", "gelu"):
            raise ValueError(
                f"VictorianGPTConfig: `activation_function` must be 'gelu_new' or 'gelu', got {self.activation_function!r}"
            )

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "VictorianGPTConfig":
        """Build a named preset (`gpt2-124m`, `small`, `tiny`), with optional field overrides."""
        if name not in PRESETS:
            raise ValueError(f"Unknown model preset {name!r}; choose one of {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})
