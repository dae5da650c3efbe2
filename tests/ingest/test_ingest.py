"""Ingest: the canonical table, and every kind of bad input ending in quarantine."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from povid_kedro.ingest import (
    IngestConfig,
    NoValidRecordsError,
    ingest,
    read_records,
    sample_stratified,
    split_by_image,
)
from povid_kedro.ingest.images import ImageFolder
from povid_kedro.schema import GROUND_TRUTH_COLUMNS

DESCRIBE = "Describe the following image in detail."


def _record(rec_id: str, image: str, question: str = f"<image>\n{DESCRIBE}", answer="A red cup."):
    return {
        "id": rec_id,
        "image": image,
        "conversations": [
            {"from": "human", "value": question},
            {"from": "gpt", "value": answer},
        ],
    }


@pytest.fixture
def image_root(tmp_path: Path) -> Path:
    root = tmp_path / "images"
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        pixels = rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / f"img{i}.png")
    Image.new("L", (16, 16), 128).save(root / "grey.png")
    (root / "corrupt.png").write_bytes(b"this is not a png")
    good = (root / "img0.png").read_bytes()
    (root / "truncated.png").write_bytes(good[: len(good) // 2])
    (tmp_path / "outside.png").write_bytes(good)
    return root


@pytest.fixture
def cfg() -> IngestConfig:
    return IngestConfig.from_dict(
        {"description_prompts": [DESCRIBE], "eval_fraction": 0.0, "seed": 0}
    )


def test_reads_single_and_multi_turn_llava_records(image_root, cfg):
    multi = {
        "id": "m1",
        "image": "img1.png",
        "conversations": [
            {"from": "human", "value": "What is on the left?\n<image>"},
            {"from": "gpt", "value": "A cup."},
            {"from": "human", "value": "What colour is it?"},
            {"from": "gpt", "value": "Red."},
        ],
    }
    files = {"detail": [_record("d1", "img0.png")], "chat": [multi]}
    table, quarantine = read_records(files, ImageFolder(image_root), cfg)

    assert quarantine.empty
    assert list(table.columns) == GROUND_TRUTH_COLUMNS
    rows = table.set_index("id")
    assert rows.loc["d1", "task_type"] == "description"
    assert rows.loc["d1", "answer"] == "A red cup."
    assert rows.loc["m1_0", "task_type"] == "reasoning"
    assert rows.loc["m1_1", "answer"] == "Red."
    # Every row is a sample of its own and carries the image placeholder.
    assert all("<image>" in p for p in table["prompt"])
    assert table["rejected"].isna().all()


def test_reads_povid_preference_format(image_root, cfg):
    record = _record("p1", "img2.png", answer="A red cup.")
    record["rejected_conversations"] = [
        {"from": "human", "value": f"<image>\n{DESCRIBE}"},
        {"from": "gpt", "value": "A red cup next to a fork."},
    ]
    table, quarantine = read_records({"povid": [record]}, ImageFolder(image_root), cfg)
    assert quarantine.empty
    assert table.loc[0, "rejected"] == "A red cup next to a fork."
    assert table.loc[0, "answer"] == "A red cup."


def test_task_type_from_file_mapping_overrides_auto(image_root):
    cfg = IngestConfig.from_dict({"task_types": {"complex": "reasoning"}})
    table, _ = read_records({"complex": [_record("c1", "img0.png")]}, ImageFolder(image_root), cfg)
    assert table.loc[0, "task_type"] == "reasoning"


def test_short_answer_file_is_its_own_task_type(image_root):
    cfg = IngestConfig.from_dict({"task_types": {"vqa": "vqa"}})
    table, _ = read_records({"vqa": [_record("v1", "img0.png")]}, ImageFolder(image_root), cfg)
    assert table.loc[0, "task_type"] == "vqa"


@pytest.mark.parametrize(
    ("record", "reason", "words"),
    [
        ("not a dict", "not_an_object", "not a JSON object"),
        ({"image": "img0.png", "conversations": []}, "missing_id", "no 'id'"),
        (_record("x1", ""), "missing_image", "no 'image'"),
        ({"id": "x2", "image": "img0.png"}, "malformed_conversation", "non-empty list"),
        (_record("x3", "img0.png", answer=""), "missing_answer", "empty answer"),
        (
            {"id": "x4", "image": "img0.png", "conversations": [{"from": "human", "value": "q"}]},
            "missing_answer",
            "no answer",
        ),
        (_record("x5", "missing.png"), "image_not_found", "not found"),
        (_record("x6", "corrupt.png"), "image_unreadable", "cannot be decoded"),
        (_record("x7", "truncated.png"), "image_unreadable", "cannot be decoded"),
        (_record("x8", "grey.png"), "image_not_rgb", "mode L"),
        (_record("x9", "../outside.png"), "image_escapes_root", "escapes the image root"),
        (_record("x10", "/etc/passwd"), "image_escapes_root", "absolute"),
        (_record("x11", "img0.png", question=DESCRIBE), "prompt_without_image_token", "<image>"),
    ],
)
def test_bad_record_goes_to_quarantine_with_reason(image_root, cfg, record, reason, words):
    files = {"detail": [_record("ok", "img3.png"), record]}
    table, quarantine = read_records(files, ImageFolder(image_root), cfg)

    assert table["id"].tolist() == ["ok"]  # the good record is kept
    assert len(quarantine) == 1
    row = quarantine.iloc[0]
    assert row["reason"] == reason
    assert row["source"] == "detail"
    assert row["index"] == 1
    assert words in row["message"]
    assert row["message"].startswith("detail[1]")  # names the file and record


def test_duplicate_ids_in_one_file_keep_the_first_and_name_it(image_root, cfg):
    files = {"a": [_record("same", "img0.png"), _record("same", "img1.png")]}
    table, quarantine = read_records(files, ImageFolder(image_root), cfg)
    assert table["image"].tolist() == ["img0.png"]
    assert quarantine.iloc[0]["reason"] == "duplicate_id"
    assert "a[0]" in quarantine.iloc[0]["message"]


def test_an_id_shared_by_two_files_is_qualified_by_the_later_file(image_root, cfg):
    # LLaVA-Instruct's detail_23k and complex_reasoning_77k both key records by image id.
    files = {"a": [_record("same", "img0.png")], "b": [_record("same", "img0.png")]}
    table, quarantine = read_records(files, ImageFolder(image_root), cfg)
    assert table["id"].tolist() == ["same", "b-same"]
    assert quarantine.empty


def _two_turns(rec_id: str, image: str) -> dict:
    return {
        "id": rec_id,
        "image": image,
        "conversations": [
            {"from": "human", "value": "<image>\nWhat is on the left?"},
            {"from": "gpt", "value": "A cup."},
            {"from": "human", "value": "What colour is it?"},
            {"from": "gpt", "value": "Red."},
        ],
    }


@pytest.mark.parametrize("multi_first", [True, False])
def test_turn_ids_never_collide_with_record_ids(image_root, cfg, multi_first):
    # Record "r" with two turns gives rows r_0, r_1; a record whose own id is "r_1" would
    # give a second row r_1, whichever comes first.
    multi, single = _two_turns("r", "img0.png"), _record("r_1", "img1.png")
    files = {"detail": [multi, single] if multi_first else [single, multi]}
    table, quarantine = read_records(files, ImageFolder(image_root), cfg)

    assert table["id"].is_unique
    assert table["id"].tolist() == (["r_0", "r_1"] if multi_first else ["r_1"])
    (row,) = quarantine.itertuples()
    assert row.reason == "duplicate_id"
    assert "'r_1'" in row.message and "detail[0]" in row.message


def test_an_empty_input_file_is_reported_and_counted(image_root, cfg, caplog):
    files = {"detail": [_record("ok", "img3.png")], "export": []}
    train, _, quarantine, counts = ingest(files, ImageFolder(image_root), cfg)

    assert train["id"].tolist() == ["ok"]
    assert counts["files_empty"] == 1 and counts["records_quarantined"] == 0
    (row,) = quarantine.itertuples()
    assert row.reason == "empty_file" and row.source == "export"
    assert "'export'" in caplog.text and "no records" in caplog.text


def test_rejected_conversation_must_ask_the_same_question(image_root, cfg):
    record = _record("p1", "img2.png")
    record["rejected_conversations"] = [
        {"from": "human", "value": "<image>\nAnother question?"},
        {"from": "gpt", "value": "x"},
    ]
    _, quarantine = read_records({"povid": [record]}, ImageFolder(image_root), cfg)
    assert quarantine.iloc[0]["reason"] == "rejected_mismatch"


def test_non_rgb_can_be_accepted(image_root):
    cfg = IngestConfig.from_dict({"non_rgb": "accept"})
    table, quarantine = read_records(
        {"d": [_record("g", "grey.png")]}, ImageFolder(image_root), cfg
    )
    assert quarantine.empty and len(table) == 1


def test_malformed_json_file_fails_naming_the_file(image_root, cfg):
    def broken():
        return json.loads('[{"id": 1,')

    with pytest.raises(ValueError, match=r"input file 'detail' is not valid JSON"):
        read_records({"detail": broken}, ImageFolder(image_root), cfg)


def test_a_file_that_is_not_a_list_fails(image_root, cfg):
    with pytest.raises(ValueError, match="expected a JSON list"):
        read_records({"detail": {"id": 1}}, ImageFolder(image_root), cfg)


def test_no_valid_record_is_an_error_that_says_why(image_root, cfg):
    files = {"detail": [_record("a", "missing.png"), _record("b", "corrupt.png")]}
    with pytest.raises(NoValidRecordsError) as err:
        ingest(files, ImageFolder(image_root), cfg)
    message = str(err.value)
    assert "no valid record" in message
    assert "image_not_found" in message and "image_unreadable" in message
    assert "detail[0]" in message


def test_ingest_counts_cover_every_record(image_root):
    cfg = IngestConfig.from_dict(
        {"description_prompts": [DESCRIBE], "eval_fraction": 0.34, "seed": 3}
    )
    records = [_record(f"r{i}", f"img{i % 6}.png") for i in range(12)]
    records.append(_record("bad", "missing.png"))
    train, evaluation, quarantine, counts = ingest(
        {"detail": records}, ImageFolder(image_root), cfg
    )
    assert counts["rows_valid"] == 12
    assert counts["records_quarantined"] == 1
    assert counts["quarantined_image_not_found"] == 1
    assert len(train) + len(evaluation) == 12 == counts["rows_sampled"]
    assert not set(train["image"]) & set(evaluation["image"])
    assert counts["images_eval"] == 2  # floor(6 images * 0.34)


def test_split_by_image_never_shares_an_image():
    import pandas as pd

    frame = pd.DataFrame(
        {"id": [str(i) for i in range(100)], "image": [f"i{i % 17}" for i in range(100)]}
    )
    train, evaluation = split_by_image(frame, 0.3, seed=1)
    assert not set(train["image"]) & set(evaluation["image"])
    assert len(train) + len(evaluation) == 100
    assert evaluation["image"].nunique() == 5  # floor(17 * 0.3)


def test_stratified_sampling_keeps_shares_and_is_seeded():
    import pandas as pd

    frame = pd.DataFrame(
        {
            "id": [str(i) for i in range(1000)],
            "task_type": ["description"] * 300 + ["reasoning"] * 700,
        }
    )
    sample = sample_stratified(frame, 100, seed=0)
    assert len(sample) == 100
    assert (sample["task_type"] == "description").sum() == 30
    assert sample["id"].tolist() == sample_stratified(frame, 100, seed=0)["id"].tolist()
    assert sample["id"].tolist() != sample_stratified(frame, 100, seed=1)["id"].tolist()
    assert len(sample_stratified(frame, 5000, seed=0)) == 1000


def test_config_rejects_unknown_keys_and_bad_values():
    with pytest.raises(ValueError, match=r"ingest_ground_truth: unknown keys \['sample_sise'\]"):
        IngestConfig.from_dict({"sample_sise": 3})
    with pytest.raises(ValueError, match="task_types.detail"):
        IngestConfig.from_dict({"task_types": {"detail": "captioning"}})
    with pytest.raises(ValueError, match="eval_fraction"):
        IngestConfig.from_dict({"eval_fraction": 1.5})


def test_images_checked_over_several_processes_give_the_same_tables(image_root, cfg, monkeypatch):
    from povid_kedro import parallel

    names = ["img0.png", "img1.png", "missing.png", "corrupt.png", "truncated.png", "grey.png"]
    files = {"detail": [_record(f"r{i}", name) for i, name in enumerate(names * 2)]}
    serial = read_records(files, ImageFolder(image_root), cfg)
    monkeypatch.setattr(parallel, "MIN_ITEMS", 0)
    monkeypatch.setattr(parallel, "cpu_workers", lambda: 2)
    pooled = read_records(files, ImageFolder(image_root), cfg)
    for a, b in zip(serial, pooled, strict=True):
        pd.testing.assert_frame_equal(a, b)
    assert len(pooled[1]) == 8  # both records of each of the 4 bad images


def test_images_written_by_several_processes_are_the_same_files(tmp_path, monkeypatch):
    from povid_kedro import parallel
    from povid_kedro.ingest.images import write_images

    rng = np.random.default_rng(1)
    images = {
        f"sub/{i}.png": Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8))
        for i in range(20)
    }
    write_images(tmp_path / "serial", images)
    monkeypatch.setattr(parallel, "MIN_ITEMS", 0)
    write_images(tmp_path / "pooled", images, workers=2)
    for name in images:
        assert (tmp_path / "pooled" / name).read_bytes() == (
            tmp_path / "serial" / name
        ).read_bytes()
    assert not list((tmp_path / "pooled").rglob("*.tmp"))


def test_encoded_images_are_written_as_they_are_and_decoded_when_read(tmp_path):
    from povid_kedro.ingest.images import EncodedImages, encode_image, write_images

    rng = np.random.default_rng(2)
    pixels = {
        f"sub/{i}.png": Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8))
        for i in range(3)
    }
    encoded = EncodedImages({name: encode_image(image, "PNG") for name, image in pixels.items()})
    assert list(encoded) == list(pixels) and len(encoded) == 3
    write_images(tmp_path / "encoded", encoded)
    write_images(tmp_path / "pixels", pixels)
    folder = ImageFolder(tmp_path / "encoded")
    for name, image in pixels.items():
        written = (tmp_path / "encoded" / name).read_bytes()
        assert written == encoded.files[name] == (tmp_path / "pixels" / name).read_bytes()
        assert folder.open(name).tobytes() == encoded[name].tobytes() == image.tobytes()
        assert encoded[name].mode == "RGB"
    assert not list((tmp_path / "encoded").rglob("*.tmp"))
