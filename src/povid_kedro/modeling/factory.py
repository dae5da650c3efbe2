"""Build the tiny LLaVA (model + processor) from a :class:`ModelConfig` and a trained tokenizer.

The model is the stock ``LlavaForConditionalGeneration`` (a CLIP or LeViT vision tower, a 2-layer
GELU projector, a Llama language model) and the processor the stock ``LlavaProcessor``, so
everything downstream (trl, peft, ``save_pretrained``, ``AutoModelForImageTextToText``) treats it
exactly like ``llava-hf/llava-1.5-7b-hf``.
"""

from __future__ import annotations

import logging
from typing import Literal

import torch
from transformers import (
    BaseImageProcessor,
    CLIPVisionConfig,
    LevitConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
)
from transformers.utils import is_torchvision_available

from povid_kedro.modeling.config import ModelConfig
from povid_kedro.schema import IMAGE_TOKEN

logger = logging.getLogger(__name__)


def build_image_processor(cfg: ModelConfig) -> BaseImageProcessor:
    """CLIP's image processor sized for the tiny model (resize + centre-crop to ``image_size``).

    Without torchvision, transformers' ``CLIPImageProcessor`` falls back to its PIL backend with a
    warning; that backend is asked for directly here so the fallback is explicit and quiet.

    Args:
        cfg: The model config (image size, normalisation).

    Returns:
        A ``CLIPImageProcessor`` (torchvision backend) or ``CLIPImageProcessorPil``.
    """
    # Imported in the branch: naming CLIPImageProcessor without torchvision warns.
    image_processor_cls: type[BaseImageProcessor]
    if is_torchvision_available():
        from transformers import CLIPImageProcessor

        image_processor_cls = CLIPImageProcessor
    else:
        from transformers import CLIPImageProcessorPil

        image_processor_cls = CLIPImageProcessorPil
    return image_processor_cls(
        do_resize=True,
        size={"shortest_edge": cfg.image_size},
        do_center_crop=True,
        crop_size={"height": cfg.image_size, "width": cfg.image_size},
        do_rescale=True,
        do_normalize=True,
        image_mean=list(cfg.image_mean),
        image_std=list(cfg.image_std),
        do_convert_rgb=True,
    )


def _feature_strategy(cfg: ModelConfig) -> Literal["default", "full"]:
    # "default" drops CLIP's CLS feature; LeViT has none, so all its tokens are kept.
    return "default" if cfg.vision_tower == "clip" else "full"


def _feature_layer(cfg: ModelConfig, vision: CLIPVisionConfig | LevitConfig) -> int:
    # LLaVA passes the layer index on as `output_hidden_states`, where 0 reads as False and no
    # hidden states come back: LeViT's stem (hidden state 0 of len(depths) + 1) is named from
    # the end instead.
    if cfg.vision_tower == "levit" and cfg.vision_feature_layer == 0:
        return -(len(vision.depths) + 1)
    return cfg.vision_feature_layer


def _vision_config(cfg: ModelConfig) -> CLIPVisionConfig | LevitConfig:
    """The vision tower's config: a CLIP ViT, or a two-stage LeViT (read at its stem or after
    its subsampling, by ``vision_feature_layer``)."""
    if cfg.vision_tower == "clip":
        return CLIPVisionConfig(
            hidden_size=cfg.vision_hidden_size,
            intermediate_size=cfg.vision_intermediate_size,
            num_hidden_layers=cfg.vision_layers,
            num_attention_heads=cfg.vision_heads,
            image_size=cfg.image_size,
            patch_size=cfg.patch_size,
            projection_dim=cfg.vision_hidden_size,
            hidden_act="gelu",
        )
    key_dim = cfg.vision_hidden_size // cfg.vision_heads
    mlp_ratio = cfg.vision_intermediate_size // cfg.vision_hidden_size
    width = 2 * cfg.vision_hidden_size
    # The second stage has no blocks: its input, the first stage's subsampled output, is the
    # last hidden state, so vision_feature_layer -1 reads it.
    vision = LevitConfig(
        image_size=cfg.image_size,
        patch_size=cfg.patch_size,
        hidden_sizes=[cfg.vision_hidden_size, width],
        num_attention_heads=[cfg.vision_heads, width // key_dim],
        depths=[cfg.vision_layers, 0],
        key_dim=[key_dim, key_dim],
        mlp_ratio=[mlp_ratio, mlp_ratio],
        attention_ratio=[2, 2],
        drop_path_rate=0,
    )
    # One subsampling between the two stages (LevitConfig derives one per stage pair from its
    # own defaults; set after construction, as LevitConfig takes no down_ops argument).
    vision.down_ops = [["Subsample", key_dim, cfg.vision_hidden_size // key_dim, 4, mlp_ratio, 2]]
    # The projector's input width (LlavaMultiModalProjector reads it): the stem's or the
    # subsampled tokens'.
    vision.hidden_size = cfg.vision_hidden_size if cfg.vision_feature_layer == 0 else width
    return vision


def build_llava_config(cfg: ModelConfig, tokenizer: PreTrainedTokenizerFast) -> LlavaConfig:
    """The ``LlavaConfig`` of the tiny model.

    Args:
        cfg: Sizes of the vision tower and language model.
        tokenizer: The trained tokenizer (vocabulary size and special-token ids).

    Returns:
        A ``LlavaConfig`` whose image token id and sequence length match the processor.
    """
    vision = _vision_config(cfg)
    image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    if not isinstance(image_token_id, int):
        raise TypeError(f"the tokenizer maps {IMAGE_TOKEN!r} to {image_token_id!r}, not one id")
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.text_hidden_size,
        intermediate_size=cfg.text_intermediate_size,
        num_hidden_layers=cfg.text_layers,
        num_attention_heads=cfg.text_heads,
        num_key_value_heads=cfg.text_kv_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta},
        tie_word_embeddings=cfg.tie_word_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=image_token_id,
        image_seq_length=cfg.num_image_tokens,
        projector_hidden_act="gelu",
        vision_feature_select_strategy=_feature_strategy(cfg),
        vision_feature_layer=_feature_layer(cfg, vision),
        tie_word_embeddings=cfg.tie_word_embeddings,
    )


def build_processor(cfg: ModelConfig, tokenizer: PreTrainedTokenizerFast) -> LlavaProcessor:
    """The ``LlavaProcessor`` of the tiny model.

    Args:
        cfg: Image and patch size.
        tokenizer: The trained tokenizer, with its chat template.

    Returns:
        A processor that expands each ``<image>`` into ``cfg.num_image_tokens`` image tokens.
    """
    # "default" drops CLIP's CLS feature; the processor counts it as an additional token and
    # subtracts it again, so without num_additional_image_tokens=1 it would emit one token short.
    clip = cfg.vision_tower == "clip"
    return LlavaProcessor(
        image_processor=build_image_processor(cfg),
        tokenizer=tokenizer,
        patch_size=cfg.token_patch_size,
        vision_feature_select_strategy=_feature_strategy(cfg),
        num_additional_image_tokens=1 if clip else 0,
        chat_template=tokenizer.chat_template,
        image_token=IMAGE_TOKEN,
    )


def build_model_and_processor(
    cfg: ModelConfig, tokenizer: PreTrainedTokenizerFast
) -> tuple[LlavaForConditionalGeneration, LlavaProcessor]:
    """Build a freshly initialised tiny LLaVA and its processor.

    Args:
        cfg: Model sizes and the initialisation seed.
        tokenizer: The trained tokenizer (see
            :func:`povid_kedro.modeling.tokenizer.train_tokenizer`).

    Returns:
        ``(model, processor)``; the model is in float32 and eval mode.
    """
    config = build_llava_config(cfg, tokenizer)
    # Initialise under a local seed so building a model does not disturb the caller's RNG.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = LlavaForConditionalGeneration(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.eval()
    n_params = sum(p.numel() for p in model.parameters())
    logger.info(
        "built a tiny LLaVA: %.2f M parameters, %d image tokens, vocabulary %d",
        n_params / 1e6,
        cfg.num_image_tokens,
        len(tokenizer),
    )
    return model, build_processor(cfg, tokenizer)
