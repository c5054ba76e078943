"""Kept so that ``unite_logits.catalogue`` goes on working; the code lives in `unite_logits.models.catalogue`."""

from .models.catalogue import (
    CATALOGUE,
    CatalogueEntry,
    GGUFPart,
    catalogue_names,
    get_entry,
    is_catalogue_name,
    is_installed,
    missing_packages,
    package_dir,
    part_paths,
)

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
