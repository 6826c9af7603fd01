"""Profiles and the one precedence rule: injected parameter > profile default > library default.

Each stage keeps its configuration dataclass next to the code that uses it (as TRL keeps SFTConfig
beside SFTTrainer) by subclassing `StageConfig`:

    @dataclass
    class ParseConfig(StageConfig):
        PROFILE_DEFAULTS: ClassVar[dict] = {"full": {"workers": 4}}
        PATH_FIELDS: ClassVar[dict] = {"pages_path": "pages"}   # field -> DataPaths attribute
        workers: int = 2                  # the library default
        pages_path: str | None = None     # None: data_dir/pages.jsonl

    cfg = ParseConfig.from_params(profile=profile, data_dir=data_dir, workers=workers)

A notebook parameter left at `None` means "the profile's default"; any other value wins.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

from .io import DataPaths, resolve_data_dir

PROFILES = ("demo", "full")


def check_profile(profile: str) -> str:
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}: expected one of {', '.join(PROFILES)}")
    return profile


@dataclass
class StageConfig:
    """Base of every stage's configuration: the profile, the data_dir and path resolution."""

    PROFILE_DEFAULTS: ClassVar[dict[str, dict[str, Any]]] = {}
    PATH_FIELDS: ClassVar[dict[str, str]] = {}

    profile: str = "demo"
    data_dir: str = "data"

    def __post_init__(self) -> None:
        check_profile(self.profile)
        self.data_dir = str(resolve_data_dir(self.data_dir))
        paths = self.paths
        for name, attr in self.PATH_FIELDS.items():
            if getattr(self, name) is None:
                setattr(self, name, str(getattr(paths, attr)))

    @property
    def paths(self) -> DataPaths:
        return DataPaths(self.data_dir)

    @classmethod
    def from_params(cls, profile: str = "demo", **params: Any):
        """Build from notebook parameters: `None` values fall back to the profile, then the library."""
        check_profile(profile)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(params) - known)
        if unknown:
            raise TypeError(f"{cls.__name__} has no parameter(s) {', '.join(unknown)}; "
                            f"known: {', '.join(sorted(known))}")
        values = dict(cls.PROFILE_DEFAULTS.get(profile, {}))
        values.update({k: v for k, v in params.items() if v is not None})
        return cls(profile=profile, **values)

    @classmethod
    def defaults(cls, profile: str) -> dict[str, Any]:
        """Every parameter's effective default under `profile` (what the README table shows)."""
        check_profile(profile)
        out = {}
        for f in fields(cls):
            if f.default is not dataclasses.MISSING:
                out[f.name] = f.default
            elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
                out[f.name] = f.default_factory()  # type: ignore[misc]
        out.update(cls.PROFILE_DEFAULTS.get(profile, {}))
        out["profile"] = profile
        return out

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def show(self) -> None:
        """Print the resolved configuration, one `name = value` a line (for the notebook)."""
        for k, v in self.to_dict().items():
            print(f"{k:>24} = {v!r}")


__all__ = ["PROFILES", "StageConfig", "check_profile", "field"]
