"""VictorianGPT: a GPT-2-style pre-LayerNorm decoder, as a Hugging Face `PreTrainedModel`.

This file is copied into every exported model folder and loaded with `trust_remote_code=True`, so it imports
only torch, transformers and its sibling `configuration_victorian_gpt` (relatively). It runs on transformers 5
and on the last 4.x release.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.cache_utils import Cache, DynamicCache
from transformers.generation import GenerationConfig, GenerationMixin
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.pytorch_utils import Conv1D

from .configuration_victorian_gpt import VictorianGPTConfig

# transformers 5.23 renamed the KV cache's argument and output field `past_key_values` to `cache`; 4.x knows only the
# old name. Outputs are built with whichever field this release declares, so no deprecation warning is triggered.
CACHE_FIELD = "cache" if "cache" in getattr(BaseModelOutputWithPast, "__dataclass_fields__", {}) else "past_key_values"

try:  # transformers >= 5: init functions that leave weights loaded from a checkpoint alone
    from transformers import initialization as init
except ImportError:  # transformers 4.x: only missing weights are initialised, plain torch init is right there
    from torch.nn import init

try:  # transformers >= 4.52
    from transformers.modeling_layers import GradientCheckpointingLayer
except ImportError:  # pragma: no cover - older releases are not supported for training
    GradientCheckpointingLayer = nn.Module


# Projections are GPT-2's `Conv1D`: a linear layer whose weight is stored (in, out). For one row at a time (decoding)
# MKL's x @ W runs at about twice the memory bandwidth of nn.Linear's x @ W.T; for training both are plain GEMMs.


class VictorianGPTAttention(nn.Module):
    """Multi-head causal self-attention; one fused matmul makes q, k and v, SDPA does the rest."""

    def __init__(self, config: VictorianGPTConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx  # the slot of this layer in the KV cache
        self.n_head = config.n_head
        self.head_dim = config.n_embd // config.n_head
        self.c_attn = Conv1D(3 * config.n_embd, config.n_embd)
        self.c_proj = Conv1D(config.n_embd, config.n_embd)
        self.c_proj.is_residual_projection = True  # scaled at init, see _init_weights
        self.attn_pdrop = config.attn_pdrop
        self.resid_dropout = nn.Dropout(config.resid_pdrop)

    def forward(self, hidden_states, attention_mask=None, past_key_values=None):
        bsz, seq_len, _ = hidden_states.shape
        # (B, T, 3C) -> 3 x (B, H, T, D) without copies until SDPA needs them
        qkv = self.c_attn(hidden_states).view(bsz, seq_len, 3, self.n_head, self.head_dim)
        query, key, value = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        if past_key_values is not None:
            key, value = past_key_values.update(key, value, self.layer_idx)
        # No mask means "plain causal over keys == queries" (training, prefill) or "all keys" (one new token):
        # SDPA then picks its fastest kernel. Anything else (padding, multi-token extension) comes as a mask.
        out = F.scaled_dot_product_attention(
            query,
            key,
            value,
            attn_mask=attention_mask,
            dropout_p=self.attn_pdrop if self.training else 0.0,
            is_causal=attention_mask is None and seq_len > 1,
        )
        out = out.transpose(1, 2).reshape(bsz, seq_len, -1)
        return self.resid_dropout(self.c_proj(out))


class VictorianGPTMLP(nn.Module):
    """Position-wise feed-forward: widen 4x, GELU, project back."""

    def __init__(self, config: VictorianGPTConfig):
        super().__init__()
        inner = config.n_inner or 4 * config.n_embd
        self.c_fc = Conv1D(inner, config.n_embd)
        self.c_proj = Conv1D(config.n_embd, inner)
        self.c_proj.is_residual_projection = True
        self.approximate = "tanh" if config.activation_function == "gelu_new" else "none"
        self.dropout = nn.Dropout(config.resid_pdrop)

    def forward(self, hidden_states):
        return self.dropout(self.c_proj(F.gelu(self.c_fc(hidden_states), approximate=self.approximate)))


class VictorianGPTBlock(GradientCheckpointingLayer):
    """Pre-LayerNorm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, config: VictorianGPTConfig, layer_idx: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.attn = VictorianGPTAttention(config, layer_idx)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.mlp = VictorianGPTMLP(config)

    def forward(self, hidden_states, attention_mask=None, past_key_values=None, **kwargs):
        hidden_states = hidden_states + self.attn(self.ln_1(hidden_states), attention_mask, past_key_values)
        return hidden_states + self.mlp(self.ln_2(hidden_states))


class VictorianGPTPreTrainedModel(PreTrainedModel):
    config_class = VictorianGPTConfig
    config: VictorianGPTConfig
    base_model_prefix = "transformer"
    supports_gradient_checkpointing = True
    _no_split_modules = ["VictorianGPTBlock"]
    _skip_keys_device_placement = ["cache", "past_key_values"]
    _supports_sdpa = True
    _supports_cache_class = True  # transformers 4.x
    _supports_static_cache = False
    _can_compile_fullgraph = False

    def _init_weights(self, module):
        """GPT-2 initialisation: N(0, 0.02) everywhere, residual projections scaled by 1/sqrt(2 * n_layer).

        Two residual branches per block add up over depth; shrinking their output projections keeps the residual
        stream's variance independent of depth (GPT-2 paper, section 2.3). The flag sits on the layer itself:
        transformers skips parameter-less container modules when initialising remote code.
        """
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, Conv1D)):
            if getattr(module, "is_residual_projection", False):
                std = std / math.sqrt(2 * self.config.n_layer)
            init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)


def _attention_mask_for_sdpa(attention_mask, batch_size, query_len, past_len, device):
    """Turn a 2-D padding mask into what `VictorianGPTAttention` expects, or None when SDPA can go maskless.

    None is returned when no position is padded and either there is no past (plain causal) or a single new token
    (it sees every key). Otherwise a boolean (B, 1, T, past+T) mask: causal, minus padded keys.
    """
    total_len = past_len + query_len
    padded = attention_mask is not None and not bool(attention_mask[:, -total_len:].all())
    if not padded and (past_len == 0 or query_len == 1):
        return None
    key_pos = torch.arange(total_len, device=device)
    query_pos = torch.arange(past_len, total_len, device=device)
    mask = (key_pos[None, :] <= query_pos[:, None])[None, None].expand(batch_size, 1, query_len, total_len)
    if padded:
        mask = mask & attention_mask[:, None, None, -total_len:].bool()
        # A padded query row may see no key at all; let it see everything so SDPA returns numbers, not NaN.
        # Its output is never used: real tokens cannot attend to padded keys.
        mask = mask | ~mask.any(dim=-1, keepdim=True)
    return mask


class VictorianGPTModel(VictorianGPTPreTrainedModel):
    """The decoder stack: token + position embeddings, `n_layer` blocks, final LayerNorm."""

    def __init__(self, config: VictorianGPTConfig):
        super().__init__(config)
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.n_positions, config.n_embd)
        self.drop = nn.Dropout(config.embd_pdrop)
        self.h = nn.ModuleList([VictorianGPTBlock(config, i) for i in range(config.n_layer)])
        self.ln_f = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
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
        return_dict=None,
        past_key_values=None,
        **kwargs,
    ):
        past_key_values = cache if cache is not None else past_key_values  # 4.x passes the old name
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of `input_ids` or `inputs_embeds`")
        if inputs_embeds is None:
            inputs_embeds = self.wte(input_ids)
        batch_size, seq_len = inputs_embeds.shape[:2]
        device = inputs_embeds.device

        use_cache = use_cache if use_cache is not None else self.config.use_cache
        if self.gradient_checkpointing and self.training and use_cache:
            use_cache = False  # recomputation would write the cache twice
        if not use_cache:
            past_key_values = None
        elif past_key_values is None:
            past_key_values = DynamicCache(config=self.config)
        elif not isinstance(past_key_values, Cache):
            raise TypeError("`cache` must be a transformers `Cache` (e.g. DynamicCache), not a tuple")
        past_len = past_key_values.get_seq_length() if past_key_values is not None else 0

        if past_len + seq_len > self.config.n_positions:
            raise ValueError(
                f"Sequence of {past_len + seq_len} tokens exceeds the model's context of {self.config.n_positions}"
            )
        if position_ids is None:
            if attention_mask is not None:
                # Left padding: count real tokens so every prompt starts at position 0.
                position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -seq_len:]
            else:
                position_ids = torch.arange(past_len, past_len + seq_len, device=device).unsqueeze(0)
        mask = _attention_mask_for_sdpa(attention_mask, batch_size, seq_len, past_len, device)

        hidden_states = self.drop(inputs_embeds + self.wpe(position_ids))
        all_hidden_states = () if output_hidden_states else None
        for block in self.h:
            if output_hidden_states:
                all_hidden_states += (hidden_states,)
            hidden_states = block(hidden_states, mask, past_key_values)
        hidden_states = self.ln_f(hidden_states)
        if output_hidden_states:
            all_hidden_states += (hidden_states,)

        output = BaseModelOutputWithPast(
            last_hidden_state=hidden_states, hidden_states=all_hidden_states, **{CACHE_FIELD: past_key_values}
        )
        return output if return_dict is not False else output.to_tuple()


# The product's sampling defaults. They live on `model.generation_config`, which `save_pretrained` writes to
# generation_config.json; `generate()`, the Space and the server read them from there.
GENERATION_DEFAULTS = dict(do_sample=True, temperature=1.3, top_k=50, top_p=0.95, repetition_penalty=1.2)


class VictorianGPTForCausalLM(VictorianGPTPreTrainedModel, GenerationMixin):
    """VictorianGPT with a language-modelling head tied to the input embeddings."""

    _tied_weights_keys = {"lm_head.weight": "transformer.wte.weight"}

    def __init__(self, config: VictorianGPTConfig):
        super().__init__(config)
        self.transformer = VictorianGPTModel(config)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
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
        return_dict=None,
        logits_to_keep=0,
        past_key_values=None,
        **kwargs,
    ):
        r"""
        labels (`torch.LongTensor` of shape `(batch, seq_len)`): targets aligned with `input_ids` (the shift happens
            inside); -100 is ignored. `num_items_in_batch` in kwargs turns the mean into sum / that count, which is what
            gradient accumulation over uneven micro-batches needs.
        logits_to_keep: compute logits only for the last N positions (0 = all); `generate()` passes 1.
        """
        outputs = self.transformer(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache if cache is not None else past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        hidden_states = outputs.last_hidden_state
        if isinstance(logits_to_keep, int) and logits_to_keep > 0:
            hidden_states = hidden_states[:, -logits_to_keep:]
        elif isinstance(logits_to_keep, torch.Tensor):
            hidden_states = hidden_states[:, logits_to_keep]
        logits = self._logits(hidden_states)

        loss = None
        if labels is not None:
            loss = self.causal_lm_loss(logits, labels, kwargs.get("num_items_in_batch"))

        output = CausalLMOutputWithPast(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, **{CACHE_FIELD: getattr(outputs, CACHE_FIELD)}
        )
        return output if return_dict is not False else output.to_tuple()

    def _logits(self, hidden_states):
        """The output projection. On CPU without autograd (generation) it multiplies by a cached (n_embd, vocab)
        copy of the tied weight: MKL runs a single-row x @ W about twice as fast as x @ W.T, and this matmul is a
        third of a 124M model's bytes per token. The copy (vocab x n_embd floats) is rebuilt whenever the weight is
        modified, moved or cast, and never saved."""
        weight = self.lm_head.weight
        if weight.device.type != "cpu" or (torch.is_grad_enabled() and weight.requires_grad):
            return self.lm_head(hidden_states)
        key = (weight.data_ptr(), weight.dtype, weight._version)
        if self._decode_head is None or self._decode_head[0] != key:
            self._decode_head = (key, weight.detach().t().contiguous())
        return hidden_states @ self._decode_head[1]

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
