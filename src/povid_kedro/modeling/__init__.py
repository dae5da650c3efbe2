"""The model library: a tiny LLaVA trained from scratch, and batched generation (no Kedro).

- :mod:`~povid_kedro.modeling.config`: dataclass configs (tokenizer, model, training, decoding);
- :mod:`~povid_kedro.modeling.tokenizer`: byte-level BPE trained offline, LLaVA-1.5 chat template;
- :mod:`~povid_kedro.modeling.factory`: ``LlavaForConditionalGeneration`` + ``LlavaProcessor``;
- :mod:`~povid_kedro.modeling.data` / :mod:`~povid_kedro.modeling.train`: supervised training;
- :mod:`~povid_kedro.modeling.generate`: batched, left-padded, KV-cached decoding;
- :mod:`~povid_kedro.modeling.hf_dir`: load and validate a model directory (tiny or LLaVA-1.5).
"""

from povid_kedro.modeling.config import GenerateConfig, ModelConfig, TokenizerConfig, TrainConfig
from povid_kedro.modeling.data import SFTRow, rows_from_llava_instruct
from povid_kedro.modeling.factory import build_model_and_processor
from povid_kedro.modeling.generate import generate
from povid_kedro.modeling.hf_dir import ModelDirError, load_model_dir, save_model_dir
from povid_kedro.modeling.tokenizer import train_tokenizer
from povid_kedro.modeling.train import TrainResult, train_sft

__all__ = [
    "GenerateConfig",
    "ModelConfig",
    "ModelDirError",
    "SFTRow",
    "TokenizerConfig",
    "TrainConfig",
    "TrainResult",
    "build_model_and_processor",
    "generate",
    "load_model_dir",
    "rows_from_llava_instruct",
    "save_model_dir",
    "train_sft",
    "train_tokenizer",
]
