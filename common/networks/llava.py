"""LLaVA (Hugging Face ``LlavaForConditionalGeneration``) as the multimodal LLM of a segmentation assistant.

LISA, GSVA and LTSE fine-tune LLaVA with LoRA and add tokens ([SEG], [REJ]) whose hidden states
prompt a mask decoder. This module holds the LLaVA side:

* :func:`load_llava_processor`: the ``LlavaProcessor`` (tokenizer + CLIP image processor) of a
  checkpoint with the new tokens added, once per process, so that the data pipeline and the
  network use the same token ids.
* :func:`tokenize_conversation`: image + instruction (+ answer) -> ``input_ids`` (B, L) with the
  ``<image>`` placeholder expanded to one token per vision patch, ``attention_mask`` (B, L),
  ``labels`` (B, L: the answer and its end-of-sequence token, -100 elsewhere) and
  ``pixel_values`` (B, 3, h, w).
* :class:`LlavaLM`: the model with its embeddings resized for the new tokens; the base frozen
  (bf16, or 4-bit with bitsandbytes), LoRA on the language model's q/v projections, the new
  tokens' rows of the input embedding and of ``lm_head`` trainable (peft trainable tokens), and
  gradient checkpointing. ``forward`` returns the last-layer hidden states (B, L, d) and the
  logits (B, L, V).
* :func:`save_tiny_llava`: a LLaVA folder of a few hundred thousand weights (tiny Llama + tiny
  CLIP vision tower, a byte-level BPE tokenizer trained in code), built offline for tests and demos.

LLaVA-1.5-7B: 336x336 images -> 576 image tokens, d = 4096, vocabulary 32000 (+ new tokens).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from transforms.base.describe import configurable
from transforms.base.errors import PretrainedWeightsError
from transforms.base.pretrained import hub_offline, resolve_hf_model

__all__ = ["LLAVA_V1_TEMPLATE", "IGNORE_INDEX", "load_llava_processor", "tokenize_conversation", "LlavaLM",
           "tiny_llava_config", "llava_7b_config", "build_tiny_tokenizer", "save_llava_folder", "save_tiny_llava"]

# LLaVA v1 conversation (vicuna_v1, used by LLaVA v1.1 / 1.5 and by LISA): system prompt, USER, ASSISTANT
LLAVA_V1_TEMPLATE = ("A chat between a curious human and an artificial intelligence assistant. The assistant gives "
                     "helpful, detailed, and polite answers to the human's questions. USER: <image>\n{instruction} "
                     "ASSISTANT:")
IGNORE_INDEX = -100
_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def _load_error(key: str, value: str, source: str, what: str, err: Exception) -> PretrainedWeightsError:
    if Path(source).is_dir():
        return PretrainedWeightsError(key, value, f"{what} in {source}", str(err).splitlines()[0] if str(err) else "")
    if hub_offline():
        hint = ("HF_HUB_OFFLINE is set and it is not in the Hugging Face cache. Download it once on a machine "
                "with internet, or point the key at a local folder.")
    else:
        hint = "The hub could not be reached or the id is wrong; point the key at a local folder to work offline."
    return PretrainedWeightsError(key, value, f"{what} of hub id '{source}'", hint)


@functools.lru_cache(maxsize=4)
def load_llava_processor(key: str, value: str, new_tokens: tuple[str, ...] = ()):
    """The ``LlavaProcessor`` of LLaVA checkpoint ``value`` (config key ``key``) with ``new_tokens`` added.

    New tokens are ordinary added tokens (never split, kept by ``decode(skip_special_tokens=True)``),
    appended after the checkpoint's vocabulary in the order given. One processor per argument
    tuple and process.
    """
    from transformers import LlavaProcessor

    source = resolve_hf_model(key, value)
    try:
        processor = LlavaProcessor.from_pretrained(source, local_files_only=hub_offline())
    except (OSError, ValueError) as err:
        raise _load_error(key, value, source, "a LLaVA processor (tokenizer + image processor)", err) from err
    processor.tokenizer.add_tokens(list(new_tokens))
    return processor


def tokenize_conversation(processor, images: Sequence, instructions: Sequence[str],
                          answers: Sequence[str] | None = None,
                          template: str = LLAVA_V1_TEMPLATE) -> dict[str, torch.Tensor]:
    """One LLaVA prompt per image, optionally followed by its answer; right-padded to one length.

    Args:
        processor: from :func:`load_llava_processor`.
        images: RGB images the processor accepts (PIL, (H, W, 3) uint8 arrays).
        instructions: one instruction per image, put into ``template`` at ``{instruction}``.
        answers: the assistant's answers (training); each is followed by the end-of-sequence token.
        template: the conversation; must hold the processor's image token and ``{instruction}``.

    Returns ``input_ids``, ``attention_mask``, ``labels`` (answer tokens and end-of-sequence, -100
    on prompt and padding; all -100 without answers) as (B, L) long tensors and ``pixel_values``.
    The answer is tokenized apart from the prompt, so the prompt/answer boundary never merges tokens.
    """
    if len(images) != len(instructions) or (answers is not None and len(answers) != len(images)):
        raise ValueError(f"tokenize_conversation: {len(images)} images, {len(instructions)} instructions and "
                         f"{'no' if answers is None else len(answers)} answers; give one of each per sample")
    tokenizer = processor.tokenizer
    ids, labels, pixels = [], [], []
    for i, (image, instruction) in enumerate(zip(images, instructions)):
        encoded = processor(images=image, text=template.format(instruction=instruction), return_tensors="pt")
        prompt = encoded["input_ids"][0]
        row_ids, row_labels = [prompt], [torch.full_like(prompt, IGNORE_INDEX)]
        if answers is not None:
            answer = tokenizer(answers[i], add_special_tokens=False, return_tensors="pt")["input_ids"][0]
            answer = torch.cat([answer, torch.tensor([tokenizer.eos_token_id])])
            row_ids.append(answer)
            row_labels.append(answer)
        ids.append(torch.cat(row_ids))
        labels.append(torch.cat(row_labels))
        pixels.append(encoded["pixel_values"][0])
    length = max(len(r) for r in ids)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    batch = {
        "input_ids": torch.full((len(ids), length), pad, dtype=torch.long),
        "attention_mask": torch.zeros((len(ids), length), dtype=torch.long),
        "labels": torch.full((len(ids), length), IGNORE_INDEX, dtype=torch.long),
    }
    for b, (row, row_labels) in enumerate(zip(ids, labels)):
        batch["input_ids"][b, : len(row)] = row
        batch["attention_mask"][b, : len(row)] = 1
        batch["labels"][b, : len(row)] = row_labels
    batch["pixel_values"] = torch.stack(pixels)
    return batch


def _four_bit_config(compute_dtype: torch.dtype):
    """QLoRA-style NF4 quantisation of the language model's linear layers (vision tower, projector, lm_head kept)."""
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as err:
        raise ImportError("load_in_4bit=true quantises the frozen LLaVA base with bitsandbytes, which is not "
                          "installed: pip install bitsandbytes (it needs a CUDA GPU), "
                          "or set load_in_4bit=false") from err
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute_dtype,
                              llm_int8_skip_modules=["vision_tower", "multi_modal_projector", "lm_head"])


def _torch_dtype(name: str) -> torch.dtype:
    if name not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"LLaVA dtype must be float32, bfloat16 or float16, got {name!r}")
    return getattr(torch, name)


@configurable(pretrained={"pretrained": False}, sources=("name_or_path",))
class LlavaLM(nn.Module):
    """LLaVA with new tokens, LoRA and trainable new-token rows; everything else frozen.

    Args:
        name_or_path: a LLaVA checkpoint in Hugging Face format (hub id or local folder; tokenizer,
            image processor and, with ``pretrained``, the weights come from it). The paper's
            LLaVA-7B-v1.1 ships in the original LLaVA format and needs converting first; the
            default is its Hugging Face successor of the same size.
        new_tokens: tokens added to the vocabulary (their embedding and lm_head rows are trained).
        lora_r, lora_alpha, lora_dropout: LoRA rank, scale numerator (scale = alpha / r) and dropout.
        lora_targets: names of the language model's linear layers that get LoRA (the vision tower's
            layers of the same names do not).
        dtype: dtype of the frozen base (``bfloat16`` for GPUs; ``float32`` on CPU).
        load_in_4bit: NF4-quantise the language model's linear layers (needs bitsandbytes and CUDA).
        gradient_checkpointing: recompute the transformer layers' activations in the backward pass.
        pretrained: load the base weights of ``name_or_path`` (False: random weights of the
            architecture of ``model_config`` or of ``name_or_path``).
        model_config: the ``LlavaConfig`` as a dict, used with ``pretrained=False``.
        prompt_template: the conversation around an instruction (:func:`tokenize_conversation`);
            the data pipeline must build training prompts with the same one.
        config_key: the config key of ``name_or_path``, for error messages.
        train_all_token_rows: train every row of the input embedding and of ``lm_head`` (LISA's recipe;
            ~2 x 131M parameters for a 7B model); False: only the new tokens' rows.

    ``forward(input_ids (B, L), attention_mask (B, L), pixel_values (B, 3, h, w))`` -> last-layer
    hidden states (B, L, d) (after the final norm: what ``lm_head`` sees) and logits (B, L, V).
    """

    def __init__(self, name_or_path: str = "llava-hf/llava-1.5-7b-hf", new_tokens: Sequence[str] = ("[SEG]", "[REJ]"),
                 lora_r: int = 8, lora_alpha: int = 16, lora_dropout: float = 0.05,
                 lora_targets: Sequence[str] = ("q_proj", "v_proj"), dtype: str = "bfloat16",
                 load_in_4bit: bool = False, gradient_checkpointing: bool = True, pretrained: bool = True,
                 model_config: dict | None = None, prompt_template: str = LLAVA_V1_TEMPLATE,
                 config_key: str = "llava", train_all_token_rows: bool = False):
        super().__init__()
        from peft import LoraConfig, get_peft_model

        if "{instruction}" not in prompt_template:
            raise ValueError(f"prompt_template must contain '{{instruction}}', got {prompt_template!r}")
        torch_dtype = _torch_dtype(dtype)
        if load_in_4bit and not pretrained:
            raise ValueError(f"{config_key}: load_in_4bit quantises pretrained weights; it needs pretrained=true")
        quantization = _four_bit_config(torch_dtype) if load_in_4bit else None
        self.processor = load_llava_processor(config_key, name_or_path, tuple(new_tokens))
        tokenizer = self.processor.tokenizer
        if self.processor.image_token not in prompt_template:
            raise ValueError(f"prompt_template must contain the image token {self.processor.image_token!r}")
        self.prompt_template = prompt_template
        model = self._load(name_or_path, pretrained, model_config, torch_dtype, quantization, config_key)
        if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:  # never shrink a padded vocabulary
            model.resize_token_embeddings(len(tokenizer))
        self.token_ids = {token: tokenizer.convert_tokens_to_ids(token) for token in new_tokens}
        model.requires_grad_(False)
        if gradient_checkpointing:
            model.activation_checkpointing_enable()
        rows = list(self.token_ids.values())
        # a tied lm_head follows the embedding's trainable rows; an untied one gets its own
        token_rows = {"embed_tokens": rows} if model.config.tie_word_embeddings else {"embed_tokens": rows,
                                                                                     "lm_head": rows}
        # train_all_token_rows: every row of the input embedding and lm_head trains, as LISA does (peft
        # modules_to_save: trained copies of the whole matrices); otherwise only the new tokens' rows
        peft_config = LoraConfig(
            r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout, bias="none",
            target_modules=rf".*language_model.*\.({'|'.join(lora_targets)})",
            trainable_token_indices=token_rows if rows and not train_all_token_rows else None,
            modules_to_save=["embed_tokens", "lm_head"] if train_all_token_rows else None,
        )
        self.train_all_token_rows = train_all_token_rows
        self.model = get_peft_model(model, peft_config)
        for parameter in self.model.parameters():  # float32 master weights for what the optimiser updates
            if parameter.requires_grad:
                parameter.data = parameter.data.float()
        self.pretrained = pretrained
        self.hidden_size = int(model.config.text_config.hidden_size)
        self.image_size = int(model.config.vision_config.image_size)  # the CLIP tower's input side

    @staticmethod
    def _load(name_or_path, pretrained, model_config, torch_dtype, quantization, key):
        from transformers import LlavaConfig, LlavaForConditionalGeneration

        if not pretrained and model_config:
            return LlavaForConditionalGeneration._from_config(LlavaConfig.from_dict(dict(model_config)),
                                                              dtype=torch_dtype)
        source = resolve_hf_model(key, name_or_path)
        try:
            if not pretrained:
                config = LlavaConfig.from_pretrained(source, local_files_only=hub_offline())
                return LlavaForConditionalGeneration._from_config(config, dtype=torch_dtype)
            return LlavaForConditionalGeneration.from_pretrained(
                source, dtype=torch_dtype, quantization_config=quantization, local_files_only=hub_offline())
        except (OSError, ValueError) as err:
            raise _load_error(key, name_or_path, source, "LLaVA weights", err) from err

    @property
    def base(self) -> nn.Module:
        """The ``LlavaForConditionalGeneration`` inside the peft wrapper (LoRA layers in place)."""
        return self.model.get_base_model()

    def offline_arguments(self) -> dict:
        """What rebuilds the architecture without ``name_or_path``'s weights: its config."""
        return {"model_config": self.base.config.to_diff_dict()}

    def _pixels(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return pixel_values.to(next(self.base.model.vision_tower.parameters()).dtype)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        base = self.base
        out = base.model(input_ids=input_ids, attention_mask=attention_mask, pixel_values=self._pixels(pixel_values),
                         use_cache=False)
        hidden = out.last_hidden_state
        return hidden, base.lm_head(hidden)

    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, pixel_values: torch.Tensor,
                 **generation_kwargs) -> torch.Tensor:
        """Greedy decoding unless told otherwise; returns prompt + answer ids (B, L + new)."""
        tokenizer = self.processor.tokenizer
        generation_kwargs.setdefault("do_sample", False)
        generation_kwargs.setdefault("eos_token_id", tokenizer.eos_token_id)
        generation_kwargs.setdefault("pad_token_id", tokenizer.pad_token_id if tokenizer.pad_token_id is not None
                                     else tokenizer.eos_token_id)
        return self.model.generate(input_ids=input_ids, attention_mask=attention_mask,
                                   pixel_values=self._pixels(pixel_values), **generation_kwargs)


# ---------------------------------------------------------------------------- a tiny LLaVA for tests and demos
_TINY_WORDS = (
    "tumor stroma lymphocytic infiltrate necrosis debris glandular secretions blood exclude metaplasia fat "
    "plasma cells other immune infiltrate mucoid material normal acinus duct lymphatics undetermined nerve "
    "skin adnexa blood vessel angioinvasion carcinoma in situ region tissue cell cells area areas patch slide "
    "image picture pathology histology please segment show find mark outline highlight where is are the a an "
    "of in on and or this that these those there here no not any all each every sure it its them they present "
    "absent small large left right top bottom center upper lower middle part parts percent pixels mask masks "
    "what which can you could would help me I see contains contain visible none both several some many few "
    "chat between curious human artificial intelligence assistant gives helpful detailed polite answers to "
    "human's questions USER ASSISTANT yes"
)


def _tiny_corpus() -> list[str]:
    words = _TINY_WORDS.split()
    sentences = [
        f"Please segment the {a} and the {b} in this image." for a, b in zip(words, words[1:] + words[:1])
    ] + [f"Sure, {a} [x], {b} [y]." for a, b in zip(words[::2], words[1::2])]
    digits = " ".join(str(i) for i in range(100))
    return sentences + [_TINY_WORDS, digits, "( ) , . : ; ! ? ' \" - % / [ ] < > \n"]


def build_tiny_tokenizer(vocab_size: int = 1000):
    """A byte-level BPE tokenizer trained in code (no download): ``<unk>`` 0, ``<s>`` 1, ``</s>`` 2,
    ``<pad>`` 3, ``<image>`` 4; adds ``<s>`` in front like LLaMA's; encodes any text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_tiny_corpus(), trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>", additional_special_tokens=["<image>"])


def tiny_llava_config(vocab_size: int, image_token_id: int = 4, hidden_size: int = 32, num_layers: int = 2,
                      num_heads: int = 2, image_size: int = 32, patch_size: int = 8) -> dict:
    """A ``LlavaConfig`` dict: a ``num_layers``-layer Llama and a 2-layer CLIP vision tower
    (``image_size / patch_size`` squared image tokens; 16 by default)."""
    return {
        "vision_config": {"model_type": "clip_vision_model", "hidden_size": 32, "intermediate_size": 64,
                          "num_hidden_layers": 2, "num_attention_heads": 2, "image_size": image_size,
                          "patch_size": patch_size, "projection_dim": 32},
        "text_config": {"model_type": "llama", "hidden_size": hidden_size, "intermediate_size": 2 * hidden_size,
                        "num_hidden_layers": num_layers, "num_attention_heads": num_heads,
                        "num_key_value_heads": num_heads, "vocab_size": vocab_size, "max_position_embeddings": 512,
                        "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 3},
        "image_token_index": image_token_id,
        "image_seq_length": (image_size // patch_size) ** 2,
        "vision_feature_select_strategy": "default",
    }


def llava_7b_config(vocab_size: int = 32064, image_token_id: int = 32000) -> dict:
    """The architecture of ``llava-hf/llava-1.5-7b-hf`` as a ``LlavaConfig`` dict (Vicuna-7B: 32 layers,
    d = 4096; CLIP ViT-L/14 at 336 px: 576 image tokens; a two-layer GELU projector), for random-weight
    benchmarks without a download. ``vocab_size`` / ``image_token_id`` follow the tokenizer in use."""
    return {
        "vision_config": {"model_type": "clip_vision_model", "hidden_size": 1024, "intermediate_size": 4096,
                          "num_hidden_layers": 24, "num_attention_heads": 16, "image_size": 336, "patch_size": 14,
                          "projection_dim": 768, "hidden_act": "quick_gelu"},
        "text_config": {"model_type": "llama", "hidden_size": 4096, "intermediate_size": 11008,
                        "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32,
                        "vocab_size": vocab_size, "max_position_embeddings": 4096, "rms_norm_eps": 1e-5,
                        "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 3, "tie_word_embeddings": False},
        "image_token_index": image_token_id,
        "image_seq_length": 576,
        "projector_hidden_act": "gelu",
        "vision_feature_layer": -2,
        "vision_feature_select_strategy": "default",
        "tie_word_embeddings": False,
    }


def save_llava_folder(folder: str | Path, config: dict | None = None, weights: bool = True, seed: int = 0,
                      **tiny_kwargs) -> str:
    """Write a LLaVA folder that :class:`LlavaLM` and :func:`load_llava_processor` read like any checkpoint:
    the tokenizer trained in code (:func:`build_tiny_tokenizer`), a CLIP image processor and a processor
    for ``config``'s vision tower, the config, and (``weights``) random weights. ``config``: a dict taking
    the tokenizer's size as ``vocab_size`` and its ``<image>`` id (:func:`llava_7b_config`), default the
    tiny one (``tiny_kwargs`` go to :func:`tiny_llava_config`). Without weights the folder serves
    ``LlavaLM(pretrained=False)``: the architecture with random weights, nothing written but the config."""
    from transformers import CLIPImageProcessor, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    tokenizer = build_tiny_tokenizer()
    image_token = tokenizer.convert_tokens_to_ids("<image>")
    if config is None:
        config = tiny_llava_config(len(tokenizer), image_token, **tiny_kwargs)
    else:
        config = {**config, "image_token_index": image_token,
                  "text_config": {**config["text_config"], "vocab_size": max(len(tokenizer),
                                                                             config["text_config"]["vocab_size"])}}
    size = config["vision_config"]["image_size"]
    image_processor = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                                         image_mean=_CLIP_MEAN, image_std=_CLIP_STD)
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer,
                               patch_size=config["vision_config"]["patch_size"],
                               vision_feature_select_strategy="default", num_additional_image_tokens=1)
    folder = Path(folder)
    if weights:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            LlavaForConditionalGeneration(LlavaConfig.from_dict(config)).save_pretrained(folder)
    else:
        LlavaConfig.from_dict(config).save_pretrained(folder)
    processor.save_pretrained(folder)
    return str(folder)


def save_tiny_llava(folder: str | Path, seed: int = 0, **config_kwargs) -> str:
    """A tiny LLaVA folder with random weights (:func:`save_llava_folder`); ``config_kwargs`` go to
    :func:`tiny_llava_config`. Returns the folder."""
    return save_llava_folder(folder, seed=seed, **config_kwargs)


def ensure_tiny_llava(folder: str | Path = "sample_data/tiny_llava", seed: int = 0, **config_kwargs) -> str:
    """The tiny LLaVA folder of the demo (:func:`save_tiny_llava`), written first if missing (demo.yaml)."""
    if (Path(folder) / "config.json").is_file():
        return str(folder)
    print(f"writing a tiny random-weight LLaVA (tokenizer trained in code) in {folder}")
    return save_tiny_llava(folder, seed, **config_kwargs)
