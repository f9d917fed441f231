"""GPU memory estimated from model files: parameter counts checked against real weights and the
published counts of real architectures, replica figures checked by hand, and the plan's refusal.

Hand-checked figures (GiB = 2**30 bytes):
- Llama-3.1-8B: 8,030,261,248 parameters (Meta's count); KV cache 2 x 32 layers x 8 KV heads x
  128 x 2 bytes = 128 KiB a token. On one H100-80GB (79.6 GiB) with max_model_len 8192: weights
  14.96 GiB (bf16) + KV for one sequence 1.00 + activations (8192 tokens x (4 x 4096 + 2 x 14336)
  x 2 bytes = 0.69, logits 1024 x 128256 x 8 bytes = 0.98) + CUDA graphs and context 1.00 = 18.62;
  vLLM's budget 0.9 x 79.6 = 71.64 leaves 54 GiB of KV cache: 54 full 8192-token sequences.
- Qwen2.5-14B: 14,770,033,664 parameters (Qwen's count), 192 KiB of KV a token. One L4 (22.5 GiB,
  budget 20.25): weights alone are 27.51 GiB, needs 34.98 with KV for 32768 tokens (6.00),
  activations 0.47 (2048 x 48128 x 2 bytes, logits 256 x 152064 x 8 bytes) and 1.00 of overhead.
  Over two L4s (tensor_parallel_size 2): 13.76 + 3.00 + 0.47 + 1.00 = 18.23 per GPU; fits.
- Whisper-large-v3: 1,543,490,560 parameters; fp16 weights 2.87 GiB, x 1.2 for activations
  + 0.5 of CUDA context = 3.95 GiB, within 0.25 of an L4 (5.62) but not 0.1 (2.25).
"""

import json

import pytest
import yaml

from builders.gpu_memory import GIB, estimate_replica, gpu_bytes_for
from builders.model_architecture import (
    kv_bytes_per_token,
    parameter_count,
    read_model_config,
    stored_weight_bytes,
)
from configs import load_platform_config
from deploy_app import main
from tests.conftest import ROOT

CONFIGS = ROOT / "tests" / "data" / "model_configs"


def _config(name: str) -> dict:
    return json.loads((CONFIGS / name / "config.json").read_text())


@pytest.mark.parametrize(
    "name,parameters",
    [
        ("llama-3.1-8b-instruct", 8_030_261_248),
        ("qwen2.5-14b-instruct", 14_770_033_664),
        ("whisper-large-v3", 1_543_490_560),
    ],
)
def test_parameter_counts_of_real_architectures(name, parameters):
    assert parameter_count(_config(name)) == parameters


@pytest.mark.parametrize("model", ["tiny-chat", "tiny-whisper"])
def test_the_count_from_the_config_matches_the_weights_on_disk(model):
    source = str(ROOT / ".models" / model)
    assert parameter_count(read_model_config(source)) * 4 == stored_weight_bytes(
        source
    )  # float32 files


def test_kv_cache_per_token_and_its_tensor_parallel_shards():
    llama = _config("llama-3.1-8b-instruct")
    assert kv_bytes_per_token(llama, 2) == 128 * 1024
    assert kv_bytes_per_token(llama, 2, tensor_parallel=2) == 64 * 1024
    assert (
        kv_bytes_per_token(llama, 2, tensor_parallel=16) == 16 * 1024
    )  # 8 KV heads: replicated past TP 8
    assert kv_bytes_per_token(_config("qwen2.5-14b-instruct"), 2) == 192 * 1024


def _entry(name: str, model_type: str, gpus: float, **engine_kwargs) -> dict:
    entry = {
        "model_loading_config": {
            "model_id": name,
            "model_source": str(CONFIGS / name),
            "type": model_type,
        },
        "deployment_config": {"ray_actor_options": {"num_gpus": gpus}},
        "engine_kwargs": engine_kwargs,
    }
    return entry


def _replica(entry: dict, gpu_type: str):
    (spec,) = load_platform_config({"models": [entry]}).deployments()
    (memory,) = estimate_replica(spec, gpu_bytes_for(gpu_type, None))
    return memory


def test_llama_on_one_h100():
    memory = _replica(_entry("llama-3.1-8b-instruct", "vllm", 1, max_model_len=8192), "H100-80GB")
    assert round(memory.needs / GIB, 2) == 18.62
    assert round(memory.budget / GIB, 2) == 71.64 and memory.takes == memory.budget
    assert memory.kv_sequences == 54


def test_qwen_14b_fits_two_l4s_not_one():
    one = _replica(_entry("qwen2.5-14b-instruct", "vllm", 1), "L4")
    assert round(one.needs / GIB, 2) == 34.98 and one.needs > one.budget
    two = _replica(_entry("qwen2.5-14b-instruct", "vllm", 2, tensor_parallel_size=2), "L4")
    assert round(two.needs / GIB, 2) == 18.23 and two.needs <= two.budget and two.kv_sequences == 1


def test_whisper_in_a_quarter_of_an_l4():
    memory = _replica(_entry("whisper-large-v3", "audio", 0.25, task="speech-to-text"), "L4")
    assert round(memory.needs / GIB, 2) == 3.95 and memory.budget == int(
        0.25 * gpu_bytes_for("L4", None)
    )


def test_the_plan_refuses_a_config_that_cannot_fit_naming_the_model_and_numbers(tmp_path, capsys):
    path = tmp_path / "config.yaml"
    models = [
        _entry("qwen2.5-14b-instruct", "vllm", 1),
        _entry("whisper-large-v3", "audio", 0.1, task="speech-to-text"),
    ]
    path.write_text(
        yaml.safe_dump(
            {
                "applications": [
                    {
                        "name": "p",
                        "import_path": "builders.app_builder:build_app",
                        "args": {"models": models},
                    }
                ]
            }
        )
    )
    assert main(["--config", str(path), "--plan", "--gpu-type", "L4"]) == 1
    err = capsys.readouterr().err
    assert "does not fit GPUs of 22.5 GiB (L4)" in err
    assert (
        "qwen2.5-14b-instruct needs 35.0 GiB per GPU "
        "(weights 27.5, KV cache for one 32768-token sequence 6.0" in err
    )
    assert (
        "whisper-large-v3 needs 3.9 GiB per GPU (weights 2.9" in err and "may take 2.2 GiB" in err
    )
    assert (
        main(["--config", str(path), "--plan", "--gpu-memory-gib", "141", "--gpus-per-node", "2"])
        == 0
    )
    table = capsys.readouterr().out
    assert "gpu_mem_gib" in table and "126.9 (needs 36.4)" in table  # vLLM takes 0.9 of the GPU
    assert "2 GPUs of 141.0 GiB" in table
