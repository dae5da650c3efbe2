"""Tokenizer: exact round trip, whole special tokens, LLaVA-1.5 chat template."""

from __future__ import annotations

from transformers import AutoTokenizer

from povid_kedro.schema import IMAGE_TOKEN


def test_round_trip_is_exact(tokenizer):
    for text in ["There is a red circle and a blue square.", "Unseen WORDS, 42 digits!\n  ok"]:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert tokenizer.decode(ids) == text


def test_special_tokens_are_single_ids(tokenizer):
    for token in [IMAGE_TOKEN, tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token]:
        assert len(tokenizer(token, add_special_tokens=False)["input_ids"]) == 1
    assert tokenizer.image_token == IMAGE_TOKEN
    assert tokenizer.padding_side == "left"


def test_chat_template_llava15_format(tokenizer):
    prompt = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe it."}]}
    ]
    answer = [{"role": "assistant", "content": [{"type": "text", "text": "A red circle."}]}]
    rendered = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    assert rendered == "<s>USER: <image>\nDescribe it. ASSISTANT:"
    full = tokenizer.apply_chat_template(prompt + answer, tokenize=False)
    assert full == "<s>USER: <image>\nDescribe it. ASSISTANT: A red circle.</s>"
    # String content (LLaVA-Instruct style) renders the same way.
    plain = [{"role": "user", "content": "<image>\nDescribe it."}]
    assert tokenizer.apply_chat_template(plain, tokenize=False, add_generation_prompt=True) == (
        rendered
    )
    # The prompt's tokens are a prefix of the conversation's: trl finds the completion there.
    prompt_ids = tokenizer(rendered, add_special_tokens=False)["input_ids"]
    full_ids = tokenizer(full, add_special_tokens=False)["input_ids"]
    assert full_ids[: len(prompt_ids)] == prompt_ids
    assert full_ids[-1] == tokenizer.eos_token_id


def test_save_and_reload(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    text = "There is a green square."
    assert again(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert again.chat_template == tokenizer.chat_template
