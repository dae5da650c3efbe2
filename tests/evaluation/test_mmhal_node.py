"""MMHal-Bench in evaluate: judged by a real loopback chat server, or skipped, never faked."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from povid_kedro.datasets.mmhal_bench import MMHalBenchDataset
from povid_kedro.hallucination import ClientConfig
from povid_kedro.modeling import ModelConfig, TokenizerConfig, build_model_and_processor
from povid_kedro.modeling import train_tokenizer as make_tokenizer
from povid_kedro.pipelines.evaluate.nodes import mmhal_node
from povid_kedro.testing.chat_server import Action, ChatServer

PARAMS = {
    "mmhal": {
        "judge_model": "judge-test",
        "prompt_template": "<image>\n{question}",
        "generation": {"max_new_tokens": 4, "batch_size": 4, "progress": False},
        "temperature": 0.0,
        "max_tokens": 64,
    }
}


@pytest.fixture(scope="module")
def model():
    tokenizer = make_tokenizer(
        ["a red cup on a table", "<image>\nWhat is it?"],
        TokenizerConfig(vocab_size=300, min_frequency=1),
    )
    cfg = ModelConfig(
        image_size=16,
        patch_size=8,
        vision_hidden_size=16,
        vision_layers=1,
        vision_heads=2,
        vision_intermediate_size=32,
        text_hidden_size=16,
        text_layers=1,
        text_heads=2,
        text_kv_heads=2,
        text_intermediate_size=32,
        max_position_embeddings=64,
    )
    return build_model_and_processor(cfg, tokenizer)


@pytest.fixture
def bench(tmp_path):
    (tmp_path / "images").mkdir()
    records = []
    for i, kind in enumerate(["attribute", "counting", "attribute"]):
        name = f"img{i}.jpg"
        Image.new("RGB", (20, 20), (40 * i, 10, 10)).save(tmp_path / "images" / name)
        records.append(
            {
                "question_type": kind,
                "question_topic": "t",
                "image_id": name,
                "image_src": f"https://example.invalid/{name}",
                "image_content": ["cup"],
                "question": "What is it?",
                "gt_answer": "A cup.",
                "model_answer": "",
            }
        )
    (tmp_path / "response_template.json").write_text(json.dumps(records))
    return MMHalBenchDataset(str(tmp_path / "response_template.json"), str(tmp_path / "images"))


def test_mmhal_is_judged_by_the_endpoint_and_scored(model, bench):
    with ChatServer() as server:
        server.script(
            Action.answer("Fine answer. rating: 6"),
            Action.answer("Hallucinated. Rating: 1"),
            Action.answer("no rating at all"),
        )
        client = ClientConfig(base_url=server.base_url, api_key="k", model=None)
        result = mmhal_node(model, bench.load(), client, PARAMS)
        prompts = [r.user_text for r in server.requests]
    assert len(prompts) == 3
    assert "### Question\nWhat is it?" in prompts[0]
    assert result["n"] == 3
    assert result["average_score"] == pytest.approx((6 + 1 + 0) / 3)
    assert result["hallucination_rate"] == pytest.approx(2 / 3)
    assert result["n_unparsed"] == 1
    assert result["per_type"]["attribute"] == pytest.approx(3.0)


def test_mmhal_is_skipped_without_files_or_judge(model, bench, tmp_path, caplog):
    client = ClientConfig(base_url="http://127.0.0.1:9/v1", api_key=None, model=None)
    missing = MMHalBenchDataset(str(tmp_path / "nope.json"), str(tmp_path)).load()
    caplog.set_level("INFO")
    assert "not found" in mmhal_node(model, missing, client, PARAMS)["skipped"]
    no_judge = {"mmhal": {**PARAMS["mmhal"], "judge_model": None}}
    assert "no judge model" in mmhal_node(model, bench.load(), client, no_judge)["skipped"]
    assert "MMHal-Bench skipped" in caplog.text
