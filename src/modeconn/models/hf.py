"""Hugging Face transformers models (ViT, BERT, GPT-2) as modules of one tensor → tensors.

`hf_model(kind, **config)` builds one from a config, randomly initialised; `load_hf(path)` reads a
directory written by `save_pretrained` (config.json + safetensors, HF's own key names). Both give
an :class:`HFLogits`: its forward takes the input tensor alone (pixel values or token ids) and
returns tensors, so `torch.func.functional_call(model, params, (x,))` evaluates it, and its
`state_dict` keys are the HF model's keys unchanged. Nothing is downloaded; `transformers` is
imported only when a function here is called.
"""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import UsageError
from ..graph import register_layer

_MISSING = "Hugging Face models need the transformers package: pip install 'modeconn[hf]'"

#: kind → (config class, model class, input name, outputs returned, extra forward arguments).
KINDS: dict[str, tuple[str, str, str, tuple[str, ...], dict[str, Any]]] = {
    "vit": ("ViTConfig", "ViTForImageClassification", "pixel_values", ("logits",), {}),
    "bert": ("BertConfig", "BertForSequenceClassification", "input_ids", ("logits",), {}),
    "bert-model": ("BertConfig", "BertModel", "input_ids",
                   ("last_hidden_state", "pooler_output"), {}),
    "gpt2": ("GPT2Config", "GPT2LMHeadModel", "input_ids", ("logits",), {"use_cache": False}),
}
#: A checkpoint's model class (config.json "architectures") → its kind here.
_BY_CLASS = {spec[1]: kind for kind, spec in KINDS.items()}
#: The kind of a config.json that names no architectures.
_DEFAULT_KIND = {"vit": "vit", "bert": "bert-model", "gpt2": "gpt2"}
#: Attention both tracers follow: "sdpa" is one F.scaled_dot_product_attention call per layer,
#: "eager" spells it out (matmul, softmax, matmul).
ATTENTION = ("sdpa", "eager")


def _transformers():
    try:
        module = importlib.import_module("transformers")
    except ImportError:
        raise UsageError(_MISSING) from None
    # GPT-2's Conv1D is a linear layer whose weight is (in, out): the graph reader is told so.
    from transformers.pytorch_utils import Conv1D
    register_layer(Conv1D, "producer", channel_dim=-1, in_axis=0, out_axis=1)
    return module


class HFLogits(nn.Module):
    """A Hugging Face model whose forward takes one tensor and returns its outputs' tensors.

    The HF model's children are this module's children, under their own names, so `state_dict`,
    `named_parameters` and `functional_call` use the HF keys unchanged (no prefix) and an HF
    checkpoint maps 1:1. The HF model itself is `.hf` (not a submodule; it shares every
    parameter), e.g. `model.hf.save_pretrained(dir)` saves what this module holds.

    These are the names the transformers model has in memory, which its files use too for BERT
    and GPT-2; transformers 5 saves some models under their 4.x names (ViT:
    `vit.encoder.layer.0.attention.attention.query` for `vit.layers.0.attention.q_proj`) and
    renames them when loading, so read HF directories with :func:`load_hf`.

    Tied weights (GPT-2's `lm_head.weight` is `transformer.wte.weight`) appear under both names
    in `state_dict`, as in any PyTorch module (the project evaluates with
    `functional_call(..., tie_weights=False)` and its checkpoints store each name);
    `load_state_dict` fills a tied name missing from a file (HF's files hold it once).
    """

    def __init__(self, hf: nn.Module, kind: str):
        super().__init__()
        if kind not in KINDS:
            raise UsageError(f"unknown Hugging Face model kind {kind!r}; known: {', '.join(KINDS)}")
        object.__setattr__(self, "hf", hf)  # plain attribute: registering it would prefix keys
        for name, child in hf.named_children():
            self.add_module(name, child)
        for name, p in hf.named_parameters(recurse=False):
            self.register_parameter(name, p)
        for name, b in hf.named_buffers(recurse=False):
            self.register_buffer(name, b, persistent=name not in hf._non_persistent_buffers_set)
        self.kind = kind
        first: dict[int, str] = {}
        self.tied: dict[str, str] = {}  # tied name → the name state_dict keeps
        for name, p in self.named_parameters(remove_duplicate=False):
            if id(p) in first:
                self.tied[name] = first[id(p)]
            first.setdefault(id(p), name)
        self.register_load_state_dict_pre_hook(_fill_tied)
        _, _, self.input_name, self.outputs, self.extra = KINDS[kind]

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        out = self.hf(**{self.input_name: x}, **self.extra, return_dict=True)
        found = tuple(out[k] for k in self.outputs if out.get(k) is not None)
        return found[0] if len(found) == 1 else found

    def train(self, mode: bool = True) -> HFLogits:
        super().train(mode)
        self.hf.train(mode)
        return self

    def example_input(self, batch: int = 2, length: int = 8) -> torch.Tensor:
        """An input of the shape and dtype the model takes (zeros), on its device."""
        cfg = self.hf.config
        p = next(self.hf.parameters())
        if self.input_name == "pixel_values":
            size = cfg.image_size
            hw = (size, size) if isinstance(size, int) else tuple(size)
            return torch.zeros(batch, cfg.num_channels, *hw, dtype=p.dtype, device=p.device)
        positions = getattr(cfg, "max_position_embeddings", None) or cfg.n_positions
        return torch.zeros(batch, min(length, positions), dtype=torch.long, device=p.device)

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, input={self.input_name!r}"


def _fill_tied(module: HFLogits, state: dict[str, Any], prefix: str, *_: Any) -> None:
    for name, kept in module.tied.items():
        if prefix + name not in state and prefix + kept in state:
            state[prefix + name] = state[prefix + kept]


def hf_model(kind: str, *, attn_implementation: str = "sdpa", **config: Any) -> HFLogits:
    """A randomly initialised Hugging Face model of `kind` (vit, bert, bert-model, gpt2) from
    its config's fields (e.g. hidden_size=32, num_hidden_layers=2; GPT-2: n_embd, n_layer)."""
    if kind not in KINDS:
        raise UsageError(f"unknown Hugging Face model kind {kind!r}; known: {', '.join(KINDS)}")
    _check_attention(attn_implementation)
    tf = _transformers()
    config_name, class_name, *_ = KINDS[kind]
    if kind == "gpt2" and "vocab_size" in config:  # GPT-2's default token ids are 50256
        for key in ("bos_token_id", "eos_token_id"):
            config.setdefault(key, int(config["vocab_size"]) - 1)
    try:
        cfg = getattr(tf, config_name)(**config)
    except (TypeError, ValueError) as e:
        raise UsageError(f"bad {kind} config: {str(e).strip().splitlines()[0]}") from None
    cfg.architectures = [class_name]
    cfg._attn_implementation = attn_implementation
    return HFLogits(getattr(tf, class_name)(cfg), kind).eval()


def _check_attention(attn_implementation: str) -> None:
    if attn_implementation not in ATTENTION:
        raise UsageError(f"attn_implementation must be one of {', '.join(ATTENTION)}, "
                         f"not {attn_implementation!r}")


def load_hf(path: str | os.PathLike, *, attn_implementation: str = "sdpa",
            device: torch.device | str = "cpu") -> HFLogits:
    """The model a `save_pretrained` directory holds (config.json + model.safetensors), read
    without unpickling anything and without network access."""
    _check_attention(attn_implementation)
    folder = Path(path)
    if not folder.exists():
        raise UsageError(f"{folder}: no such directory; pass the directory save_pretrained wrote")
    if not folder.is_dir():
        raise UsageError(f"{folder} is a file; pass the directory save_pretrained wrote "
                         "(config.json + model.safetensors)")
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise UsageError(f"{folder} has no config.json; pass a directory written by "
                         "save_pretrained")
    try:
        raw = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UsageError(f"{config_file} is not valid JSON ({e})") from None
    if not isinstance(raw, dict):
        raise UsageError(f"{config_file} is not a JSON object")
    kind = _kind_of(raw, config_file)
    _check_weights(folder)
    tf = _transformers()
    class_name = KINDS[kind][1]
    bars = tf.utils.logging.is_progress_bar_enabled()
    tf.utils.logging.disable_progress_bar()
    try:
        hf, info = getattr(tf, class_name).from_pretrained(
            folder, local_files_only=True, use_safetensors=True, output_loading_info=True,
            attn_implementation=attn_implementation)
    except Exception as e:  # transformers raises OSError, ValueError, SafetensorError, ...
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UsageError(f"{folder}: transformers could not load it ({msg})") from None
    finally:
        if bars:
            tf.utils.logging.enable_progress_bar()
    bad = [*info.get("missing_keys", ()), *(k for k, *_ in info.get("mismatched_keys", ()))]
    if bad:
        raise UsageError(f"{folder}: model.safetensors does not match config.json "
                         f"({len(bad)} tensors missing or of another shape, e.g. {sorted(bad)[0]!r})")
    return HFLogits(hf, kind).to(device).eval()


def _kind_of(raw: dict[str, Any], config_file: Path) -> str:
    model_type = raw.get("model_type")
    if model_type not in _DEFAULT_KIND:
        raise UsageError(f"{config_file}: unknown model_type {model_type!r}; modeconn reads "
                         f"{', '.join(_DEFAULT_KIND)}")
    archs = raw.get("architectures") or []
    if not archs:
        return _DEFAULT_KIND[model_type]
    classes = {c: k for c, k in _BY_CLASS.items() if KINDS[k][0].lower() == f"{model_type}config"}
    for arch in archs:
        if arch in classes:
            return classes[arch]
    known = ", ".join(classes)
    raise UsageError(f"{config_file}: architecture {archs[0]!r} is not supported; modeconn reads "
                     f"{known}")


def _check_weights(folder: Path) -> None:
    if (folder / "model.safetensors").is_file() or (folder / "model.safetensors.index.json").is_file():
        return
    pickled = [p.name for p in (folder / "pytorch_model.bin",
                                folder / "pytorch_model.bin.index.json") if p.exists()]
    if pickled:
        raise UsageError(f"{folder} holds {pickled[0]} (a pickle), which modeconn never loads; "
                         "convert it to safetensors (save_pretrained(dir) writes model.safetensors)")
    raise UsageError(f"{folder} has no model.safetensors; save the model with save_pretrained")
