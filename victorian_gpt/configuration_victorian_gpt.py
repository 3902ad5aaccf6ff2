"""Configuration of VictorianGPT, a decoder-only transformer trained from scratch on PG19.

This file is copied into every exported model folder (``trust_remote_code``): it may import only
torch/transformers, never the rest of the ``victorian_gpt`` package.
"""

from transformers import PretrainedConfig

# The architecture options of the "modern" recipe (rotary positions, RMSNorm, SwiGLU, QK-norm, no biases, an untied
# head initialised at zero, nn.Linear layouts, no dropout), as measured against GPT-2's in bench/bench_quality.py; each
# was kept for its measured gain (README, "The recipe"). SwiGLU beat ReLU² at the same speed and is what Llama/Qwen3 use.
# The defaults of `VictorianGPTConfig.__init__` are GPT-2's, so every config.json written before these options existed
# loads as the same model.
MODERN = dict(
    position_embedding_type="rope",
    norm_type="rmsnorm",
    activation_function="swiglu",
    qk_norm=True,
    attention_bias=False,
    mlp_bias=False,
    weight_layout="linear",
    tie_word_embeddings=False,
    resid_pdrop=0.0,
    embd_pdrop=0.0,
    attn_pdrop=0.0,
)

# Named shapes. `gpt2-124m` is the product's original model; `modern-124m` the same shape with the modern recipe.
# The smaller ones are for CPU work and tests. Only fields that differ from `VictorianGPTConfig.__init__` are spelled.
_SHAPES = {
    "124m": dict(n_layer=12, n_embd=768, n_head=12, n_positions=2048, vocab_size=50304),
    "small": dict(n_layer=6, n_embd=384, n_head=6, n_positions=512, vocab_size=8192),
    "tiny": dict(n_layer=2, n_embd=64, n_head=4, n_positions=128, vocab_size=512),
}
PRESETS = {
    "gpt2-124m": _SHAPES["124m"],
    "small": _SHAPES["small"],
    "tiny": _SHAPES["tiny"],
    "modern-124m": {**_SHAPES["124m"], **MODERN},
    "modern-small": {**_SHAPES["small"], **MODERN},
    "modern-tiny": {**_SHAPES["tiny"], **MODERN},
}

# Allowed values of the string options, in one place for validation and documentation.
CHOICES = {
    "activation_function": ("gelu_new", "gelu", "relu2", "swiglu"),
    "position_embedding_type": ("learned", "rope"),
    "norm_type": ("layernorm", "rmsnorm"),
    "weight_layout": ("conv1d", "linear"),
}

AUTO_MAP = {
    "AutoConfig": "configuration_victorian_gpt.VictorianGPTConfig",
    "AutoModel": "modeling_victorian_gpt.VictorianGPTModel",
    "AutoModelForCausalLM": "modeling_victorian_gpt.VictorianGPTForCausalLM",
}


class VictorianGPTConfig(PretrainedConfig):
    r"""Configuration for [`VictorianGPTForCausalLM`]: GPT-2 field names, mapped onto the generic ones.

    Every option defaults to GPT-2's choice; the `modern-*` presets switch them together (`MODERN`).

    Args:
        vocab_size: tokens in the vocabulary (a multiple of 64 keeps the output matmul fast).
        n_positions: context length (the largest position the model is trained for).
        n_embd / n_layer / n_head: width, depth and attention heads; `n_embd % n_head == 0`.
        n_inner: MLP hidden width (default `4 * n_embd`, or `8/3 * n_embd` rounded up to 64 for `swiglu`, which has
            a third matrix: the same parameters either way).
        activation_function: `"gelu_new"` (GPT-2's tanh approximation), `"gelu"` (exact), `"relu2"` (ReLU squared,
            as in the NanoGPT speedrun) or `"swiglu"` (SiLU-gated, as in Llama).
        position_embedding_type: `"learned"` (GPT-2's absolute embeddings, `wpe`) or `"rope"` (rotary, as in Llama;
            `rope_theta` is its base).
        norm_type: `"layernorm"` (GPT-2) or `"rmsnorm"` (Llama): the norm before each block branch and at the end.
        qk_norm: RMS-normalise queries and keys per head before attention (as in Qwen3 and OLMo 2).
        attention_multiplier: the scale of the attention logits, softmax(q k^T * attention_multiplier); None is
            1 / sqrt(head size). Another scale folds into the query weights (the QK-norm's, or the query projection's)
            when the model converts to a native class, which all scale by 1 / sqrt(head size).
        attention_bias / mlp_bias: biases in the attention and MLP projections (`weight_layout="conv1d"` always has
            them).
        weight_layout: `"conv1d"` (GPT-2's `Conv1D`, weights stored (in, out)) or `"linear"` (`nn.Linear`, weights
            stored (out, in), as in Llama: what weight-only quantizers such as torchao know).
        tie_word_embeddings: share the input embedding with the output head. An untied head starts at zero.
        zero_init_residual: start the output projection of every residual branch at zero (each block starts as the
            identity), instead of GPT-2's N(0, 0.02 / sqrt(2 * n_layer)).
        final_logit_softcapping: if set, logits become `cap * tanh(logits / cap)` (as in Gemma 2).
        resid_pdrop / embd_pdrop / attn_pdrop: dropout after residual branches, on embeddings, on attention weights.
        layer_norm_epsilon (also used by RMSNorm), initializer_range: as in GPT-2.
        context_keep / context_discard: how a sequence goes on past `n_positions` (a context shift, as llama.cpp's):
            the first `context_keep` tokens stay, the oldest `context_discard` fraction of the rest is dropped, and
            decoding goes on at positions 0.. again (rotary keys rotated back, learned positions encoded again).
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
        position_embedding_type="learned",
        rope_theta=10000.0,
        norm_type="layernorm",
        qk_norm=False,
        attention_multiplier=None,
        attention_bias=True,
        mlp_bias=True,
        weight_layout="conv1d",
        zero_init_residual=False,
        final_logit_softcapping=None,
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
        context_keep=4,
        context_discard=0.5,
        **kwargs,
    ):
        self.vocab_size = vocab_size
        self.n_positions = n_positions
        self.n_embd = n_embd
        self.n_layer = n_layer
        self.n_head = n_head
        self.n_inner = n_inner
        self.activation_function = activation_function
        self.position_embedding_type = position_embedding_type
        self.rope_theta = rope_theta
        self.norm_type = norm_type
        self.qk_norm = qk_norm
        self.attention_multiplier = attention_multiplier
        self.attention_bias = attention_bias
        self.mlp_bias = mlp_bias
        self.weight_layout = weight_layout
        self.zero_init_residual = zero_init_residual
        self.final_logit_softcapping = final_logit_softcapping
        self.resid_pdrop = resid_pdrop
        self.embd_pdrop = embd_pdrop
        self.attn_pdrop = attn_pdrop
        self.layer_norm_epsilon = layer_norm_epsilon
        self.initializer_range = initializer_range
        self.use_cache = use_cache
        self.context_keep = context_keep
        self.context_discard = context_discard
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
        if not (isinstance(self.context_keep, int) and 0 <= self.context_keep <= self.n_positions // 2):
            raise ValueError(f"VictorianGPTConfig: `context_keep` must be an integer from 0 to n_positions / 2, got "
                             f"{self.context_keep!r}")
        if not 0 < self.context_discard < 1:
            raise ValueError(f"VictorianGPTConfig: `context_discard` must be between 0 and 1, got "
                             f"{self.context_discard!r}")
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
        for name, allowed in CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"VictorianGPTConfig: `{name}` must be one of {allowed}, got {getattr(self, name)!r}")
        for name in ("qk_norm", "attention_bias", "mlp_bias", "zero_init_residual"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"VictorianGPTConfig: `{name}` must be true or false, got {getattr(self, name)!r}")
        if self.weight_layout == "conv1d" and not (self.attention_bias and self.mlp_bias):
            raise ValueError(
                "VictorianGPTConfig: `weight_layout='conv1d'` (GPT-2's Conv1D) always has biases; use "
                "weight_layout='linear' for attention_bias=False or mlp_bias=False"
            )
        if self.position_embedding_type == "rope" and ((self.n_embd // self.n_head) % 2 or not self.rope_theta > 0):
            raise ValueError(
                f"VictorianGPTConfig: rotary positions need an even head size (n_embd / n_head = "
                f"{self.n_embd / self.n_head:g}) and rope_theta > 0 (got {self.rope_theta!r})"
            )
        scale = self.attention_multiplier
        if scale is not None and (isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale > 0):
            raise ValueError(f"VictorianGPTConfig: `attention_multiplier` must be > 0 or None, got {scale!r}")
        cap = self.final_logit_softcapping
        if cap is not None and (isinstance(cap, bool) or not isinstance(cap, (int, float)) or not cap > 0):
            raise ValueError(f"VictorianGPTConfig: `final_logit_softcapping` must be > 0 or None, got {cap!r}")

    @property
    def mlp_hidden_size(self) -> int:
        """The MLP's hidden width: `n_inner`, or what keeps its parameter count at GPT-2's 8 * n_embd**2."""
        if self.n_inner is not None:
            return self.n_inner
        if self.activation_function == "swiglu":
            return -(-8 * self.n_embd // 3 // 64) * 64
        return 4 * self.n_embd

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "VictorianGPTConfig":
        """Build a named preset (see `PRESETS`: `gpt2-124m`, `modern-124m`, `small`, `modern-small`, ...), with optional
        field overrides."""
        if name not in PRESETS:
            raise ValueError(f"Unknown model preset {name!r}; choose one of {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})
