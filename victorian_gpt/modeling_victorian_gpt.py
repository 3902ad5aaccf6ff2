"""VictorianGPT: a decoder-only transformer, as a Hugging Face `PreTrainedModel`.

One implementation, two recipes chosen by the config (`configuration_victorian_gpt.MODERN`):
- GPT-2 (the defaults, and every export written before the options existed): learned absolute positions, LayerNorm,
  GELU, biases, `Conv1D` projections, input and output embeddings tied.
- modern: rotary positions, RMSNorm, a SwiGLU MLP, RMS-normalised queries and keys, no biases, `nn.Linear` projections,
  an untied head that starts at zero. Each choice was kept because a measured run said so (bench/bench_quality.py).

Attention goes through transformers' attention interface (`ALL_ATTENTION_FUNCTIONS`: sdpa, eager, flex_attention,
flash_attention_2, the paged ones of continuous batching), chosen with `attn_implementation=` at `from_pretrained`.

This file is copied into every exported model folder and loaded with `trust_remote_code=True`, so it imports
only torch, transformers and its sibling `configuration_victorian_gpt` (relatively). It runs on every transformers
release from 5.0 and on the last 4.x release (4.57.6): where transformers' APIs differ between them, the code asks
the installed release (a signature, an attribute), never its version number.
"""

import functools
import inspect
import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.cache_utils import DynamicCache, DynamicLayer, StaticCache
from transformers.generation import GenerationConfig, GenerationMixin
from transformers.masking_utils import create_causal_mask
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.pytorch_utils import Conv1D

from .configuration_victorian_gpt import VictorianGPTConfig

try:  # transformers >= 5: init functions that leave weights loaded from a checkpoint alone
    from transformers import initialization as init
except ImportError:  # transformers 4.x: only missing weights are initialised, plain torch init is right there
    from torch.nn import init

try:  # transformers >= 4.52
    from transformers.modeling_layers import GradientCheckpointingLayer
except ImportError:  # pragma: no cover - older releases are not supported for training
    GradientCheckpointingLayer = nn.Module

# transformers 5.23 renamed the KV cache's argument and output field `past_key_values` to `cache`; 4.x knows only the
# old name. Outputs are built with whichever field this release declares, so no deprecation warning is triggered.
CACHE_FIELD = "cache" if "cache" in getattr(BaseModelOutputWithPast, "__dataclass_fields__", {}) else "past_key_values"

# transformers' mask builder changed its arguments three times: 5.3 renamed `input_embeds` to `inputs_embeds`, 5.9
# dropped `cache_position` (the cache knows how many tokens it holds), 5.24 renamed `past_key_values` to `cache`.
# The keywords are read from the installed release's signature, not from its version number.
_MASK_PARAMETERS = inspect.signature(create_causal_mask).parameters
_MASK_EMBEDS = "inputs_embeds" if "inputs_embeds" in _MASK_PARAMETERS else "input_embeds"
_MASK_CACHE = "cache" if "cache" in _MASK_PARAMETERS else "past_key_values"
_MASK_TAKES_CACHE_POSITION = "cache_position" in _MASK_PARAMETERS  # transformers < 5.9


def _causal_mask(config, inputs_embeds, attention_mask, cache, position_ids, cache_position):
    """The mask the configured attention implementation wants (None when SDPA can use `is_causal`, a BlockMask for
    flex attention, a 4-D mask passed through as given), from transformers' own mask builder.

    `cache_position` (the indices of this call's tokens in the sequence, i.e. past length + arange) is what releases
    before 5.9 place the queries with; later ones ask the cache."""
    kwargs = {"config": config, _MASK_EMBEDS: inputs_embeds, "attention_mask": attention_mask, _MASK_CACHE: cache,
              "position_ids": position_ids}
    if _MASK_TAKES_CACHE_POSITION:
        kwargs["cache_position"] = cache_position
    return create_causal_mask(**kwargs)


_UPDATE_TAKES_KWARGS: dict = {}


def _update_takes_kwargs(cache_class) -> bool:
    """transformers 5 caches take the attention kwargs in `update` (paged caches need them); 4.x ones do not."""
    known = _UPDATE_TAKES_KWARGS.get(cache_class)
    if known is None:
        parameters = inspect.signature(cache_class.update).parameters
        known = "kwargs" in parameters or any(p.kind is p.VAR_KEYWORD for p in parameters.values())
        _UPDATE_TAKES_KWARGS[cache_class] = known
    return known


# The caches generate() makes, known before anything runs: torch.compile guards on this dict, so a compiled decode
# step (StaticCache) would compile again when another model's DynamicCache first added itself.
for _cache_class in (DynamicCache, StaticCache):
    _update_takes_kwargs(_cache_class)


class GrowingKVLayer(DynamicLayer):
    """A `DynamicLayer` whose keys and values are views of buffers with room to grow: a decode step writes its token
    in place instead of copying the layer's whole cache (`torch.cat`) into a new allocation. Anything that replaces
    `keys`/`values` (beam reordering, batch selection) gets fresh buffers at the next update; a crop stays a view, and
    the next token is written where the crop ended. (The server's engine has its own, which any model may use.)"""

    _room = None  # (keys buffer, values buffer), (B, H, capacity, D)

    def update(self, key_states, value_states, *args, **kwargs):
        keys = self.keys
        if not self.is_initialized or keys is None or keys.numel() == 0:
            return super().update(key_states, value_states, *args, **kwargs)
        length, new = keys.shape[-2], key_states.shape[-2]
        room = self._room
        if (room is None or room[0].data_ptr() != keys.data_ptr() or room[0].stride() != keys.stride()
                or room[0].shape[:2] != keys.shape[:2] or room[0].shape[-2] < length + new):
            capacity = length + new + max(64, length // 2)
            room = tuple(torch.empty(*t.shape[:2], capacity, t.shape[-1], dtype=t.dtype, device=t.device)
                         for t in (keys, self.values))
            room[0][:, :, :length] = keys
            room[1][:, :, :length] = self.values
            self._room = room
        room[0][:, :, length : length + new] = key_states
        room[1][:, :, length : length + new] = value_states
        self.keys, self.values = room[0][:, :, : length + new], room[1][:, :, : length + new]
        return self.keys, self.values


def _grow_in_place(cache):
    """Give a plain `DynamicCache` (what `generate()` makes) `GrowingKVLayer`s before it holds anything."""
    if type(cache) is not DynamicCache or getattr(cache, "offloading", False):
        return
    layers = getattr(cache, "layers", None)
    if layers is None:  # releases before 4.56 keep lists of tensors
        return
    for i, layer in enumerate(layers):
        if type(layer) is DynamicLayer and not layer.is_initialized:
            layers[i] = GrowingKVLayer()
    if getattr(cache, "layer_class_to_replicate", None) is DynamicLayer:  # a cache that adds layers as it goes
        cache.layer_class_to_replicate = GrowingKVLayer


def eager_attention_forward(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """Attention written out: softmax(q k^T * scaling + mask) v. Returns (B, T, H, D) output and the weights."""
    weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            weights = weights.masked_fill(~attention_mask, torch.finfo(weights.dtype).min)
        else:
            weights = weights + attention_mask
    weights = F.softmax(weights, dim=-1, dtype=torch.float32).to(query.dtype)
    weights = F.dropout(weights, p=dropout, training=module.training)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights


def _projection(config: VictorianGPTConfig, n_in: int, n_out: int, bias: bool) -> nn.Module:
    """GPT-2's `Conv1D` (weight (in, out)) or `nn.Linear` (weight (out, in)), as `config.weight_layout` says."""
    return Conv1D(n_out, n_in) if config.weight_layout == "conv1d" else nn.Linear(n_in, n_out, bias=bias)


class VictorianGPTRMSNorm(nn.Module):
    """RMSNorm as Llama computes it: normalise in float32, cast back, then scale."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        return self.weight * F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps).to(x.dtype)


def _norm(config: VictorianGPTConfig, dim: int) -> nn.Module:
    if config.norm_type == "rmsnorm":
        return VictorianGPTRMSNorm(dim, config.layer_norm_epsilon)
    return nn.LayerNorm(dim, eps=config.layer_norm_epsilon)


def rotary_embeddings(position_ids, head_dim: int, theta: float, dtype):
    """cos and sin, (B, T, head_dim), of Llama's rotary embedding (the two halves of a head rotate together).

    Computed from the positions each call rather than held in a buffer: it is (B, T, head_dim) of work, and nothing
    has to be restored after `from_pretrained` builds the model on the meta device."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, device=position_ids.device, dtype=torch.float32) / head_dim)
    freqs = position_ids[..., None].float() * inv_freq
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rotary_qk(qk, cos, sin):
    """Rotate queries and keys by their positions, together: `qk` is (B, T, 2, H, D), cos and sin (B, T, D). One set of
    operations for both (at one token per decode step, their number is the cost, not their arithmetic)."""
    cos, sin = cos[:, :, None, None], sin[:, :, None, None]
    x1, x2 = qk.chunk(2, dim=-1)
    return qk * cos + torch.cat((-x2, x1), dim=-1) * sin


class VictorianGPTAttention(nn.Module):
    """Multi-head causal self-attention; one fused matmul makes q, k and v, the attention interface does the rest."""

    def __init__(self, config: VictorianGPTConfig, layer_idx: int):
        super().__init__()
        self.config = config  # the attention interface reads `config._attn_implementation`
        self.layer_idx = layer_idx  # the slot of this layer in the KV cache
        self.n_head = config.n_head
        self.head_dim = config.n_embd // config.n_head
        self.num_key_value_groups = 1  # what transformers' attention functions read: no grouped-query attention
        # 1/sqrt(D) unless the config names another scale (with QK-norm the logits are bounded by D times the scale)
        self.scaling = config.attention_multiplier if config.attention_multiplier is not None else self.head_dim**-0.5
        self.is_causal = True
        self.attn_pdrop = config.attn_pdrop
        self.c_attn = _projection(config, config.n_embd, 3 * config.n_embd, config.attention_bias)
        self.c_proj = _projection(config, config.n_embd, config.n_embd, config.attention_bias)
        self.c_proj.is_residual_projection = True  # scaled (or zeroed) at init, see _init_weights
        # QK-norm bounds the attention logits, which lets the learning rate go higher without loss spikes
        self.q_norm = VictorianGPTRMSNorm(self.head_dim, config.layer_norm_epsilon) if config.qk_norm else None
        self.k_norm = VictorianGPTRMSNorm(self.head_dim, config.layer_norm_epsilon) if config.qk_norm else None
        self.resid_dropout = nn.Dropout(config.resid_pdrop)

    def _attention_interface(self):
        """The function of `config._attn_implementation`, read at every call so that `set_attn_implementation` switches
        it. (transformers lets `set_attn_implementation` switch a model only when its source spells the lookup as its
        own models do: `ALL_ATTENTION_FUNCTIONS.get_interface(` from 5.3, `ALL_ATTENTION_FUNCTIONS[self.config.
        _attn_implementation]` before, each beside `eager_attention_forward`. Keep both spellings.)"""
        if self.config._attn_implementation in (None, "eager"):
            return eager_attention_forward
        if hasattr(ALL_ATTENTION_FUNCTIONS, "get_interface"):  # transformers 5
            return ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, eager_attention_forward)
        return ALL_ATTENTION_FUNCTIONS[self.config._attn_implementation]  # transformers 4.x

    def forward(self, hidden_states, attention_mask=None, cache=None, position_embeddings=None, **kwargs):
        bsz, seq_len, _ = hidden_states.shape
        # (B, T, 3C) -> 3 x (B, H, T, D) without copies until attention needs them
        qkv = self.c_attn(hidden_states).view(bsz, seq_len, 3, self.n_head, self.head_dim)
        if self.q_norm is None and position_embeddings is None:
            query, key, value = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        else:  # queries and keys normalised and rotated together, (B, T, 2, H, D)
            qk, value = qkv[:, :, :2], qkv[:, :, 2].transpose(1, 2)
            if self.q_norm is not None:
                weight = torch.stack((self.q_norm.weight, self.k_norm.weight))[:, None]  # (2, 1, D)
                qk = weight * F.rms_norm(qk.float(), (self.head_dim,), eps=self.q_norm.eps).to(qk.dtype)
            if position_embeddings is not None:
                qk = apply_rotary_qk(qk, *position_embeddings)
            query, key = qk.permute(2, 0, 3, 1, 4).unbind(0)
        if cache is not None:
            if _update_takes_kwargs(type(cache)):
                key, value = cache.update(key, value, self.layer_idx, kwargs=kwargs)
            else:  # transformers 4.x
                key, value = cache.update(key, value, self.layer_idx)
        out, weights = self._attention_interface()(
            self, query, key, value, attention_mask,
            dropout=self.attn_pdrop if self.training else 0.0, scaling=self.scaling, **kwargs,
        )
        out = out.reshape(bsz, seq_len, -1)
        return self.resid_dropout(self.c_proj(out)), weights


class VictorianGPTMLP(nn.Module):
    """Position-wise feed-forward: widen, nonlinearity (GELU, ReLU² or a SiLU gate), project back."""

    def __init__(self, config: VictorianGPTConfig):
        super().__init__()
        inner = config.mlp_hidden_size
        self.activation = config.activation_function
        gated = self.activation == "swiglu"  # c_fc makes gate and value together
        self.c_fc = _projection(config, config.n_embd, 2 * inner if gated else inner, config.mlp_bias)
        self.c_proj = _projection(config, inner, config.n_embd, config.mlp_bias)
        self.c_proj.is_residual_projection = True
        self.dropout = nn.Dropout(config.resid_pdrop)

    def forward(self, hidden_states):
        h = self.c_fc(hidden_states)
        if self.activation == "relu2":  # sparse and cheap; beat GELU in the NanoGPT speedrun
            h = F.relu(h).square()
        elif self.activation == "swiglu":
            gate, h = h.chunk(2, dim=-1)
            h = F.silu(gate) * h
        else:
            h = F.gelu(h, approximate="tanh" if self.activation == "gelu_new" else "none")
        return self.dropout(self.c_proj(h))


class VictorianGPTBlock(GradientCheckpointingLayer):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config: VictorianGPTConfig, layer_idx: int):
        super().__init__()
        self.ln_1 = _norm(config, config.n_embd)
        self.attn = VictorianGPTAttention(config, layer_idx)
        self.ln_2 = _norm(config, config.n_embd)
        self.mlp = VictorianGPTMLP(config)

    def forward(self, hidden_states, attention_mask=None, cache=None, position_embeddings=None, **kwargs):
        attn_out, weights = self.attn(self.ln_1(hidden_states), attention_mask, cache, position_embeddings, **kwargs)
        hidden_states = hidden_states + attn_out
        return hidden_states + self.mlp(self.ln_2(hidden_states)), weights


class VictorianGPTPreTrainedModel(PreTrainedModel):
    config_class = VictorianGPTConfig
    config: VictorianGPTConfig
    base_model_prefix = "transformer"
    supports_gradient_checkpointing = True
    _no_split_modules = ["VictorianGPTBlock"]
    _skip_keys_device_placement = ["cache", "past_key_values"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flash_attn_2 = True  # transformers 4.x's name
    _supports_flex_attn = True
    _supports_attention_backend = True  # any implementation registered in ALL_ATTENTION_FUNCTIONS, paged ones too
    _supports_cache_class = True  # transformers 4.x
    _supports_static_cache = False
    _can_compile_fullgraph = False

    def _init_weights(self, module):
        """GPT-2 initialisation: N(0, 0.02) everywhere, residual projections scaled by 1/sqrt(2 * n_layer).

        Two residual branches per block add up over depth; shrinking their output projections keeps the residual
        stream's variance independent of depth (GPT-2 paper, section 2.3). With `zero_init_residual` they start at
        zero instead (every block starts as the identity), and an untied head starts at zero (the first predictions
        are uniform, and the embeddings get their first gradients through the blocks, not the head). The flag sits on
        the layer itself: transformers skips parameter-less container modules when initialising remote code.
        """
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, Conv1D)):
            if getattr(module, "is_residual_projection", False):
                std = std / math.sqrt(2 * self.config.n_layer)
            zero = (getattr(module, "is_residual_projection", False) and self.config.zero_init_residual) or (
                getattr(module, "is_output_head", False) and not self.config.tie_word_embeddings
            )
            (init.zeros_ if zero else functools.partial(init.normal_, mean=0.0, std=std))(module.weight)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, VictorianGPTRMSNorm):
            init.ones_(module.weight)


class VictorianGPTModel(VictorianGPTPreTrainedModel):
    """The decoder stack: token (+ learned position) embeddings, `n_layer` blocks, final norm."""

    def __init__(self, config: VictorianGPTConfig):
        super().__init__(config)
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.rope = config.position_embedding_type == "rope"
        self.wpe = None if self.rope else nn.Embedding(config.n_positions, config.n_embd)
        self.drop = nn.Dropout(config.embd_pdrop)
        self.h = nn.ModuleList([VictorianGPTBlock(config, i) for i in range(config.n_layer)])
        self.ln_f = _norm(config, config.n_embd)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self):
        return self.wte

    def set_input_embeddings(self, new_embeddings):
        self.wte = new_embeddings

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        position_ids=None,
        cache=None,
        inputs_embeds=None,
        use_cache=None,
        output_hidden_states=None,
        output_attentions=None,
        return_dict=None,
        past_key_values=None,
        **kwargs,
    ):
        cache = cache if cache is not None else past_key_values  # transformers 4.x passes the old name
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of `input_ids` or `inputs_embeds`")
        if inputs_embeds is None:
            inputs_embeds = self.wte(input_ids)
        seq_len = inputs_embeds.shape[1]
        device = inputs_embeds.device

        if use_cache is None:  # a training forward keeps no KV cache unless asked to
            use_cache = self.config.use_cache and not self.training
        if self.gradient_checkpointing and self.training and use_cache:
            use_cache = False  # recomputation would write the cache twice
        if isinstance(cache, (tuple, list)):
            raise TypeError("`cache` must be a transformers `Cache` (e.g. DynamicCache), not a tuple")
        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)
        if cache is not None and not self.training:
            _grow_in_place(cache)
        # (a cache passed with use_cache=False is still used: continuous batching hands its paged cache in that way)

        # Past the context (generate() asked for more tokens than `n_positions`): the context shifts, as llama.cpp's
        # does, and decoding goes on at positions counted in the cache again (see `_shift_context`).
        shifted = (cache is not None and not self.training and not torch.compiler.is_compiling()
                   and self._shift_context(input_ids, attention_mask, cache, seq_len))
        if shifted:
            position_ids = torch.arange(cache.get_seq_length(), cache.get_seq_length() + seq_len,
                                        device=device).unsqueeze(0)
            kwargs.pop("cache_position", None)
        # Where this call's tokens start: a cache position given by the caller (generate() on transformers < 5.9,
        # continuous batching) is authoritative, otherwise the cache says how many tokens it holds. Positions come from
        # the caller when it passes them (generate() does; continuous batching always does: its cache has no length).
        cache_position = kwargs.get("cache_position")
        if position_ids is None or (cache_position is None and _MASK_TAKES_CACHE_POSITION):
            if cache_position is not None:
                past_len = int(cache_position[0])
            else:
                past_len = cache.get_seq_length() if cache is not None else 0
            if cache_position is None and _MASK_TAKES_CACHE_POSITION:
                cache_position = torch.arange(past_len, past_len + seq_len, device=device)
        if position_ids is None:
            if past_len + seq_len > self.config.n_positions:
                raise ValueError(
                    f"Sequence of {past_len + seq_len} tokens exceeds the model's context of {self.config.n_positions}"
                )
            if attention_mask is not None and attention_mask.dim() == 2:
                # Left padding: count real tokens so every prompt starts at position 0.
                positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -seq_len:]
            else:
                positions = torch.arange(past_len, past_len + seq_len, device=device).unsqueeze(0)
        else:
            positions = position_ids
        if shifted or seq_len == 1 and self.config._attn_implementation in (None, "eager", "sdpa") and (
            attention_mask is None or (attention_mask.dim() == 2 and bool(attention_mask.all()))
        ):
            # A decode step with no padding: one query that sees every cached key. transformers' builder would say
            # the same (no mask for SDPA, an all-true one for eager) after a tenth of a millisecond of Python.
            mask = None
        else:
            mask = _causal_mask(self.config, inputs_embeds, attention_mask, cache, position_ids, cache_position)

        if self.rope:
            hidden_states = inputs_embeds
            position_embeddings = rotary_embeddings(
                positions, self.config.n_embd // self.config.n_head, self.config.rope_theta, inputs_embeds.dtype
            )
        else:
            hidden_states = inputs_embeds + self.wpe(positions)
            position_embeddings = None
        hidden_states = self.drop(hidden_states)
        all_hidden_states = () if output_hidden_states else None
        all_attentions = () if output_attentions else None
        for block in self.h:
            if output_hidden_states:
                all_hidden_states += (hidden_states,)
            hidden_states, weights = block(
                hidden_states, attention_mask=mask, cache=cache, position_embeddings=position_embeddings, **kwargs
            )
            if output_attentions:
                all_attentions += (weights,)
        hidden_states = self.ln_f(hidden_states)
        if output_hidden_states:
            all_hidden_states += (hidden_states,)

        output = BaseModelOutputWithPast(
            last_hidden_state=hidden_states, hidden_states=all_hidden_states, attentions=all_attentions,
            **{CACHE_FIELD: cache},
        )
        return output if return_dict is not False else output.to_tuple()

    def _shift_context(self, input_ids, attention_mask, cache, seq_len) -> bool:
        """Make room for this call's token when the cache already holds `n_positions` (a generate() past the
        context), in place: keep the first `context_keep` tokens, drop the oldest `context_discard` of the rest, and
        rotate the kept rotary keys back by as many positions (learned positions: the kept tokens are encoded again,
        from the token ids this cache has seen). Returns whether the cache has been shifted, now or before: the call
        then takes its positions from the cache. One sequence at a time (a padded batch cannot shift row by row here:
        victorian-gpt's engine does that), one new token per call."""
        config = self.config
        layers = getattr(cache, "layers", None)
        if layers is None or not hasattr(cache, "get_seq_length"):
            return False  # a paged cache (continuous batching) or the engine's own: their owners keep to the context
        length = cache.get_seq_length()
        if not self.rope and input_ids is not None and input_ids.shape[0] == 1:  # what a re-encoding would need
            seen = cache.__dict__.setdefault("_victorian_gpt_ids", [])
            if not length:
                seen.clear()
            seen.extend(input_ids[0].tolist())
        if length + seq_len <= config.n_positions:
            return bool(getattr(cache, "_victorian_gpt_shifted", False))
        padded = attention_mask is not None and not bool(attention_mask.all())
        if seq_len != 1 or padded or input_ids is None or input_ids.shape[0] != 1 or not all(
                type(layer).__name__ in ("DynamicLayer", "GrowingKVLayer") for layer in layers):
            raise ValueError(
                f"{length + seq_len} tokens exceed the model's context of {config.n_positions}: a prompt must fit in "
                "it (cut it), and generate() goes on past it one sequence at a time (no padding, a DynamicCache); "
                "for a batch, victorian-gpt's engine (`victorian-gpt generate`, `serve`) shifts each sequence"
            )
        dropped = max(1, int((length + 1 - config.context_keep) * config.context_discard))
        keep = config.context_keep
        if self.rope:
            head_dim = config.n_embd // config.n_head
            angles = rotary_embeddings(torch.full((1, 1), -dropped, device=input_ids.device), head_dim,
                                       config.rope_theta, torch.float32)
            cos, sin = (x[0, 0] for x in angles)
            for layer in layers:
                keys = layer.keys[:, :, keep + dropped :].float()
                x1, x2 = keys.chunk(2, dim=-1)
                rotated = (keys * cos + torch.cat((-x2, x1), dim=-1) * sin).to(layer.keys.dtype)
                layer.keys = torch.cat((layer.keys[:, :, :keep], rotated), dim=2)
                layer.values = torch.cat((layer.values[:, :, :keep], layer.values[:, :, keep + dropped :]), dim=2)
        else:
            seen = cache._victorian_gpt_ids[:-1]  # the cached tokens (this call's token is the last one seen)
            kept = seen[:keep] + seen[keep + dropped :]
            fresh = DynamicCache(config=config)
            self(input_ids=torch.tensor([kept], device=input_ids.device), cache=fresh, use_cache=True)
            for layer, new in zip(layers, fresh.layers):
                layer.keys, layer.values = new.keys, new.values
            cache._victorian_gpt_ids[:] = kept + cache._victorian_gpt_ids[-1:]
        cache._victorian_gpt_shifted = True
        return True


# The product's sampling defaults. They live on `model.generation_config`, which `save_pretrained` writes to
# generation_config.json; `generate()`, the Space and the server read them from there. Chosen by bench/bench_samples.py
# and bench/bench_long_samples.py (the fewest non-words whose repetition stays within real prose's at 200 tokens and
# over 2,000 past the context, quarter by quarter; docs/serving.md, "Sampling defaults").
GENERATION_DEFAULTS = dict(do_sample=True, temperature=0.7, top_k=50, top_p=0.9, repetition_penalty=1.2)


class VictorianGPTForCausalLM(VictorianGPTPreTrainedModel, GenerationMixin):
    """VictorianGPT with a language-modelling head (tied to the input embeddings unless the config unties it)."""

    _tied_weights_keys = {"lm_head.weight": "transformer.wte.weight"}

    def __init__(self, config: VictorianGPTConfig):
        super().__init__(config)
        self.transformer = VictorianGPTModel(config)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.is_output_head = True  # zero at init when untied, see _init_weights
        self._decode_head = None  # (key, weight.T contiguous): see `_logits`
        self.post_init()
        # from_pretrained replaces this with the folder's generation_config.json when there is one
        self.generation_config = GenerationConfig(
            bos_token_id=config.bos_token_id,
            eos_token_id=config.eos_token_id,
            pad_token_id=config.pad_token_id,
            **GENERATION_DEFAULTS,
        )

    def get_input_embeddings(self):
        return self.transformer.wte

    def set_input_embeddings(self, new_embeddings):
        self.transformer.wte = new_embeddings

    def get_output_embeddings(self):
        return self.lm_head

    def tie_weights(self, *args, **kwargs):
        """transformers' tying, then one repair: transformers 5.3.0 drops a remote-code model's tied head from the keys
        it knows to be missing when loading, then declines to tie it ("both are present") and leaves it on the meta
        device (5.4 fixed it). A tied config whose head was never loaded means the head is the input embedding."""
        result = super().tie_weights(*args, **kwargs)
        wte = self.transformer.wte.weight
        if self.config.tie_word_embeddings and self.lm_head.weight is not wte and self.lm_head.weight.is_meta:
            self.lm_head.weight = wte
            if isinstance(getattr(self, "all_tied_weights_keys", None), dict):  # what save_pretrained leaves out
                self.all_tied_weights_keys["lm_head.weight"] = "transformer.wte.weight"
        return result

    def set_output_embeddings(self, new_embeddings):
        self.lm_head = new_embeddings

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        position_ids=None,
        cache=None,
        inputs_embeds=None,
        labels=None,
        use_cache=None,
        output_hidden_states=None,
        output_attentions=None,
        return_dict=None,
        logits_to_keep=0,
        past_key_values=None,
        **kwargs,
    ):
        r"""
        cache (`Cache`): the KV cache (`past_key_values` on transformers 4.x; both names are accepted).
        labels (`torch.LongTensor` of shape `(batch, seq_len)`): targets aligned with `input_ids` (the shift happens
            inside); -100 is ignored. `num_items_in_batch` in kwargs turns the mean into sum / that count, which is what
            gradient accumulation over uneven micro-batches needs.
        logits_to_keep: compute logits only for the last N positions (0 = all), or at the given indices (a tensor);
            `generate()` passes 1.
        Other keyword arguments (e.g. those of continuous batching's paged attention) reach the attention functions.
        """
        num_items_in_batch = kwargs.pop("num_items_in_batch", None)
        outputs = self.transformer(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache if cache is not None else past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
            return_dict=True,
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state
        if isinstance(logits_to_keep, int) and logits_to_keep > 0:
            hidden_states = hidden_states[:, -logits_to_keep:]
        elif isinstance(logits_to_keep, torch.Tensor):
            hidden_states = hidden_states[:, logits_to_keep]
        logits = self._logits(hidden_states)

        loss = None
        if labels is not None:
            loss = self.causal_lm_loss(logits, labels, num_items_in_batch)

        output = CausalLMOutputWithPast(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions,
            **{CACHE_FIELD: getattr(outputs, CACHE_FIELD)},
        )
        return output if return_dict is not False else output.to_tuple()

    def _logits(self, hidden_states):
        """The output projection (then the optional soft cap). On CPU without autograd (generation) it multiplies by a
        cached (n_embd, vocab) copy of the weight: MKL runs a single-row x @ W about twice as fast as x @ W.T, and this
        matmul is a third of a 124M model's bytes per token. The copy (vocab x n_embd floats) is rebuilt whenever the
        weight is modified, moved or cast, and never saved; quantized weights (tensor subclasses) take the plain path."""
        weight = self.lm_head.weight
        if (
            weight.device.type != "cpu"
            or (torch.is_grad_enabled() and weight.requires_grad)
            or type(weight.data) is not torch.Tensor
        ):
            logits = self.lm_head(hidden_states)
        else:
            key = (weight.data_ptr(), weight.dtype, weight._version)
            if self._decode_head is None or self._decode_head[0] != key:
                self._decode_head = (key, weight.detach().t().contiguous())
            logits = hidden_states @ self._decode_head[1]
        cap = self.config.final_logit_softcapping
        return logits if cap is None else cap * torch.tanh(logits / cap)

    @staticmethod
    def causal_lm_loss(logits, labels, num_items_in_batch=None):
        """Next-token cross-entropy: position t predicts labels[t + 1]; -100 is ignored.

        The labels are shifted (a cheap copy of integers) rather than the logits (a copy of B x T x V floats).
        """
        labels = F.pad(labels, (0, 1), value=-100)[:, 1:].to(logits.device)
        reduction = "mean" if num_items_in_batch is None else "sum"
        loss = F.cross_entropy(
            logits.float().view(-1, logits.size(-1)), labels.reshape(-1), ignore_index=-100, reduction=reduction
        )
        return loss if num_items_in_batch is None else loss / num_items_in_batch


VictorianGPTConfig.register_for_auto_class()
VictorianGPTModel.register_for_auto_class("AutoModel")
VictorianGPTForCausalLM.register_for_auto_class("AutoModelForCausalLM")

__all__ = ["VictorianGPTPreTrainedModel", "VictorianGPTModel", "VictorianGPTForCausalLM"]
