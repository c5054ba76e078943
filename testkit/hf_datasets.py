"""A Hugging Face datasets cache built in a test's folder, as a download would have left it.

``datasets`` run offline looks a hub dataset up in its cache as
``<cache>/<namespace>___<name>/<config>/<version>/<hash>/`` (arrow files and
``dataset_info.json``). `cache_dataset` writes such an entry with datasets' own JSON builder,
so the tests can check the "cached, offline" path of lm-eval's own tasks without a network.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["cache_dataset"]


def cache_dataset(cache: Path, repo_id: str, config_name: str, splits: Mapping[str, Sequence[dict[str, Any]]]) -> Path:
    """Put ``splits`` (split name -> rows) into the datasets cache ``cache`` as ``repo_id``'s
    configuration ``config_name``; returns the entry's folder."""
    from datasets.packaged_modules.json.json import Json

    namespace, name = repo_id.split("/")
    staging = cache / ".staging"
    files = {}
    for split, rows in splits.items():
        path = staging / "files" / f"{split}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
        files[split] = str(path)
    builder = Json(cache_dir=str(staging / "built"), dataset_name=name, config_name=config_name, data_files=files)
    builder.download_and_prepare()
    entry = cache / f"{namespace}___{name}" / config_name / "0.0.0" / ("0" * 40)
    shutil.copytree(builder.cache_dir, entry)
    info = json.loads((entry / "dataset_info.json").read_text(encoding="utf-8"))
    info["config_name"] = config_name  # the builder named it after its data files; a download names it so
    (entry / "dataset_info.json").write_text(json.dumps(info), encoding="utf-8")
    shutil.rmtree(staging)
    return entry
