"""LoRA adapter directories the tests make themselves: what the YAML's checks read of one."""

from __future__ import annotations

import json
from pathlib import Path


def lora_adapter(path: Path, rank: int = 8) -> Path:
    """A directory vLLM and the config checks take for a LoRA adapter (its
    ``adapter_config.json``)."""
    path.mkdir(parents=True)
    (path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": rank}))
    return path
