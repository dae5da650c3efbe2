"""A byte-level BPE tokenizer trained offline on the world's texts, with a LLaVA-1.5 chat template.

Byte-level BPE decodes back to exactly the text it encoded (no unknown words, no lost case or
spacing), which keeps answers and metrics honest. The chat template renders conversations the way
LLaVA-1.5 does, ``USER: <image>\\n{prompt} ASSISTANT: {answer}</s>``, and renders the prompt alone
(with the generation prompt) as a prefix of the full conversation, so that trl's DPO tokenization
finds the completion where it starts.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from povid_kedro.modeling.config import TokenizerConfig
from povid_kedro.schema import IMAGE_TOKEN

logger = logging.getLogger(__name__)

PAD_TOKEN = "<pad>"
BOS_TOKEN = "<s>"
EOS_TOKEN = "</s>"
UNK_TOKEN = "<unk>"
SPECIAL_TOKENS = [PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, UNK_TOKEN, IMAGE_TOKEN]

# LLaVA-1.5 conversation format (``sep=" "``, ``sep2="</s>"``). Content may be a string (used
# verbatim, so "<image>\n..." from LLaVA-Instruct works as is) or a list of {"type": "image"} /
# {"type": "text"} parts (the conversational format of trl and llava-hf), where images are
# rendered first. The template adds the BOS token itself and the tokenizer adds no special
# tokens, so every path (processor call, apply_chat_template(tokenize=True), trl) yields exactly
# one BOS.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}"
    "{% if message['content'] is string %}{{ message['content'] + ' ' }}"
    "{% else %}{% for part in message['content'] %}{% if part['type'] == 'text' %}"
    "{{ part['text'] + ' ' }}{% endif %}{% endfor %}{% endif %}"
    "{% else %}"
    "{{ message['role'].upper() + ': ' }}"
    "{% if message['content'] is string %}"
    "{% if message['role'] == 'assistant' %}{% generation %}{{ message['content'] + eos_token }}"
    "{% endgeneration %}{% else %}{{ message['content'] + ' ' }}{% endif %}"
    "{% else %}"
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}{{ '<image>\n' }}"
    "{% endif %}{% endfor %}"
    "{% if message['role'] == 'assistant' %}{% generation %}"
    "{% for part in message['content'] %}{% if part['type'] == 'text' %}{{ part['text'] }}"
    "{% endif %}{% endfor %}{{ eos_token }}{% endgeneration %}"
    "{% else %}"
    "{% for part in message['content'] %}{% if part['type'] == 'text' %}{{ part['text'] + ' ' }}"
    "{% endif %}{% endfor %}"
    "{% endif %}"
    "{% endif %}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)

# Words of the template itself, added to the training texts so that they get merged tokens too.
_TEMPLATE_TEXTS = ["USER: ASSISTANT:", "USER: <image>\n ASSISTANT:"]


def train_tokenizer(
    texts: Iterable[str], cfg: TokenizerConfig | None = None
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer and wrap it for transformers.

    Args:
        texts: Training texts (prompts and answers); special tokens in them are kept whole.
        cfg: Vocabulary size, merge threshold and case handling.

    Returns:
        A ``PreTrainedTokenizerFast`` with ``<pad>``, ``<s>``, ``</s>``, ``<unk>`` and ``<image>``
        as special tokens, left padding (for generation) and the LLaVA-1.5 chat template.
    """
    cfg = cfg or TokenizerConfig()
    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    if cfg.lowercase:
        tok.normalizer = normalizers.Lowercase()
    # add_prefix_space=False: "ASSISTANT:" + " answer" then tokenizes like the two parts apart.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=cfg.vocab_size,
        min_frequency=cfg.min_frequency,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_with_template_texts(texts), trainer=trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        unk_token=UNK_TOKEN,
        extra_special_tokens={"image_token": IMAGE_TOKEN},
        padding_side="left",
        chat_template=CHAT_TEMPLATE,
        model_max_length=4096,
        clean_up_tokenization_spaces=False,
    )
    logger.info("trained a byte-level BPE tokenizer with %d tokens", len(wrapped))
    return wrapped


def _with_template_texts(texts: Iterable[str]) -> Iterable[str]:
    yield from _TEMPLATE_TEXTS
    yield from texts
