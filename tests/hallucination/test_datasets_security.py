"""The client and cache datasets, and the API key never leaving memory."""

from __future__ import annotations

import json
import logging

import pytest
from kedro.io import DataCatalog, DatasetError

from povid_kedro.datasets.injection_cache import InjectionCacheDataset
from povid_kedro.datasets.openai_client import OpenAIClientDataset
from povid_kedro.hallucination import (
    ClientConfig,
    InjectionCache,
    diff_report,
    make_injector,
    to_povid_json,
    to_trl_rows,
)
from povid_kedro.testing.chat_server import Action, RecordedRequest
from povid_kedro.testing.synthetic import hallucinate
from tests.hallucination.conftest import SECRET

CLIENT_TYPE = "povid_kedro.datasets.openai_client.OpenAIClientDataset"
CACHE_TYPE = "povid_kedro.datasets.injection_cache.InjectionCacheDataset"


def test_client_dataset_takes_the_key_from_credentials_and_hides_it():
    catalog = DataCatalog.from_config(
        {
            "openai_client": {
                "type": CLIENT_TYPE,
                "base_url": "http://127.0.0.1:1/v1",
                "model": "gpt-4o",
                "credentials": "openai",
            }
        },
        credentials={"openai": {"api_key": SECRET}},
    )
    config = catalog.load("openai_client")
    assert isinstance(config, ClientConfig)
    assert config.api_key == SECRET and config.model == "gpt-4o"
    assert config.base_url == "http://127.0.0.1:1/v1"
    for text in (repr(config), str(config), repr(catalog), str(catalog["openai_client"])):
        assert SECRET not in text
    assert "***" in repr(config)
    assert SECRET not in json.dumps(catalog["openai_client"]._describe())


def test_client_dataset_falls_back_to_the_environment(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    config = OpenAIClientDataset(base_url="http://x/v1").load()
    assert config.api_key == SECRET and config.model is None
    monkeypatch.delenv("OPENAI_API_KEY")
    assert OpenAIClientDataset(base_url="http://x/v1").load().api_key is None


def test_client_dataset_is_load_only_and_checks_credentials():
    dataset = OpenAIClientDataset(base_url="http://x/v1", credentials={"api_key": SECRET})
    with pytest.raises(DatasetError, match="read-only") as err:
        dataset.save(ClientConfig("http://x/v1"))
    assert SECRET not in str(err.value)
    with pytest.raises(DatasetError, match="unknown key") as err:
        OpenAIClientDataset(base_url="http://x/v1", credentials={"token": SECRET})
    assert SECRET not in str(err.value)


def test_cache_dataset_opens_and_creates_the_folder(tmp_path):
    folder = tmp_path / "cache" / "inject"
    catalog = DataCatalog.from_config({"cache": {"type": CACHE_TYPE, "filepath": str(folder)}})
    cache = catalog.load("cache")
    assert isinstance(cache, InjectionCache) and folder.is_dir()
    cache.put("k", {"status": "ok"})
    catalog.save("cache", cache)  # closes; records are already on disk
    assert catalog.load("cache").get("k") == cache.get("k")
    with pytest.raises(DatasetError, match="accepts only"):
        catalog.save("cache", {"not": "a cache"})
    with pytest.raises(DatasetError, match="cannot save"):
        catalog.save("cache", InjectionCache(tmp_path / "elsewhere"))
    assert InjectionCacheDataset(str(folder))._describe() == {
        "filepath": str(folder),
        "fsync": True,
    }


def test_key_appears_in_no_output_log_or_cache(
    openai_params, server, samples, load_image, tmp_path, caplog
):
    """The key is sent to the server and nowhere else, on success and on every error path."""
    by_answer = dict(zip(samples["answer"], samples["id"], strict=True))
    ids = list(samples["id"])

    def respond(request: RecordedRequest) -> Action:
        sid = by_answer.get(request.quoted or "")
        if sid == ids[0]:
            return Action.refusal()
        if sid == ids[1]:
            # A proxy that echoes the request's credentials in its error message.
            body = json.dumps({"error": {"message": f"bad key {SECRET}", "type": "x"}}).encode()
            return Action.error(400, body=body)
        if sid == ids[2]:
            return Action.error(500)
        if sid == ids[3]:
            return Action.malformed()
        if sid == ids[4]:
            return Action.answer(f"Here is the modified answer: {request.quoted} ({SECRET})")
        return Action.answer(hallucinate(request.quoted or ""))

    server.set_responder(respond)
    caplog.set_level(logging.DEBUG)
    client = OpenAIClientDataset(
        base_url=server.base_url, model="test-model", credentials={"api_key": SECRET}
    ).load()
    cache_dir = tmp_path / "cache"
    result = make_injector(
        openai_params, client_config=client, cache=InjectionCache(cache_dir)
    ).inject(samples, load_image)
    assert len(result.pairs) + len(result.failures) == len(samples)
    assert {"refusal", "client_error_400", "server_error", "malformed_response"} <= set(
        result.failures["reason"]
    )
    assert server.chat_requests[0].headers["authorization"] == f"Bearer {SECRET}"

    out = tmp_path / "out"
    out.mkdir()
    result.pairs.to_parquet(out / "pairs.parquet")
    result.pairs.to_csv(out / "pairs.csv")
    result.failures.to_csv(out / "failures.csv")
    (out / "povid.json").write_text(json.dumps(to_povid_json(result.pairs)))
    to_trl_rows(result.pairs).to_json(out / "trl.jsonl", orient="records", lines=True)
    (out / "report.md").write_text(diff_report(result.pairs, 50))
    (out / "stats.json").write_text(json.dumps(result.stats))
    (out / "params.json").write_text(json.dumps(openai_params))

    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.parent == cache_dir for p in files)
    for path in files:
        assert SECRET.encode() not in path.read_bytes(), path
    assert SECRET not in caplog.text
    for record in caplog.records:
        assert SECRET not in record.getMessage()
    assert SECRET not in repr(result.failures.to_dict("records"))
