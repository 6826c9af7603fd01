"""One home for every default, one value parser, one precedence rule.

Every stage keeps its configuration dataclass next to its code (as TRL keeps SFTConfig beside SFTTrainer).
A field holds the `full` profile's value and its help text; the `demo` profile is a short dict of
overrides (as nanoGPT's config files are), and so is `original`: the original project's method, written once, as
data (`XConfig.overrides("original")`; the README, tests and benchmarks use it from there):

    @dataclass
    class ParseConfig(StageConfig):
        PROFILE_OVERRIDES: ClassVar[dict] = {"demo": {"workers": 1}}
        PATH_FIELDS: ClassVar[dict] = {"pages_path": "pages"}        # field -> DataPaths attribute
        workers: int = option(4, "parse processes")
        pages_path: str | None = option(None, "None: data_dir/pages.jsonl")

    cfg = ParseConfig.from_params(profile=profile, data_dir=data_dir, workers=workers)
    cfg = ParseConfig.from_notebook(globals())      # in a notebook: the same, from the parameters cell

Precedence: injected parameter > profile override > field default. A parameter left at `None` means
"the profile's default". Every value, wherever it comes from (a notebook literal, `-p key value` on the
runner, `--key value` on a stage's command line), goes through `coerce` against the field's type, so a
typo is a clear error before anything is read or written.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, Union

from .io import DataPaths, contains, resolve_data_dir

PROFILES = ("demo", "full", "original")
_NONE_WORDS = ("none", "null")
_TRUE_WORDS = ("true", "yes", "on", "1")
_FALSE_WORDS = ("false", "no", "off", "0")


def check_profile(profile: str) -> str:
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}: expected one of {', '.join(PROFILES)}")
    return profile


def option(default: Any, help: str, *, choices: tuple | None = None, ge: float | None = None,
           gt: float | None = None, le: float | None = None, lt: float | None = None) -> Any:
    """A config field: its `full`-profile default, the help text shown by --help and the stage's docs page, (for string
    values) the allowed choices, and (for numbers) the allowed range: `ge`/`gt` (>=, >) and `le`/`lt`."""
    meta: dict[str, Any] = {"help": help}
    if choices is not None:
        meta["choices"] = tuple(choices)
    bounds = {k: v for k, v in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt)) if v is not None}
    if bounds:
        meta["range"] = bounds
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return field(default=default, metadata=meta)


# ------------------------------------------------------------------------------------------------ values
class ConfigValueError(ValueError):
    """A parameter's value does not fit its type: names the parameter, the value and what was expected."""


def type_members(hint: Any) -> list[Any]:
    """`int | None` -> [int, NoneType]; `Any` -> [Any]."""
    if typing.get_origin(hint) in (Union, types.UnionType):
        return list(typing.get_args(hint))
    return [hint]


def describe_type(hint: Any) -> str:
    names = []
    for m in type_members(hint):
        base = typing.get_origin(m) or m
        names.append("None" if m is type(None) else getattr(base, "__name__", str(m)))
    return " or ".join(names)


def _from_text(text: str, member: Any) -> Any:
    """Parse one string as one type member; raises ValueError when it does not fit."""
    low = text.strip().lower()
    base = typing.get_origin(member) or member
    if member is type(None):
        if low in _NONE_WORDS:
            return None
    elif base is bool:
        if low in _TRUE_WORDS:
            return True
        if low in _FALSE_WORDS:
            return False
    elif base is int:
        return int(text.strip())
    elif base is float:
        return float(text.strip())
    elif base in (list, tuple):
        s = text.strip()
        if s.startswith("["):
            value = json.loads(s)
            if isinstance(value, list):
                return value
        else:
            return [p.strip() for p in s.split(",") if p.strip()]
    elif base is dict:
        value = json.loads(text)
        if isinstance(value, dict):
            return value
    elif base is str:
        return text
    raise ValueError(text)


def parse_literal(text: str) -> Any:
    """papermill-like typing of an untyped string: None/True/False, int, float, JSON list/dict, else str."""
    for member in (type(None), bool, int, float):
        try:
            return _from_text(text, member)
        except ValueError:
            pass
    if text.strip()[:1] in "[{":
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            pass
    return text


def _fits(value: Any, member: Any) -> Any:
    """`value` (not a string) converted to `member`, or ValueError."""
    base = typing.get_origin(member) or member
    if member is type(None):
        if value is None:
            return None
    elif base is bool:
        if isinstance(value, bool):
            return value
    elif base is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif base is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif base in (list, tuple):
        if isinstance(value, (list, tuple)):
            return list(value)
    elif base is dict:
        if isinstance(value, dict):
            return value
    elif base is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # `-p query 2024` arrives as a number
    raise ValueError(value)


def coerce(name: str, value: Any, hint: Any, choices: tuple | None = None) -> Any:
    """`value` as the type `hint` says (strings are parsed), or a ConfigValueError naming `name`."""
    members = type_members(hint)
    if Any in members:
        out = parse_literal(value) if isinstance(value, str) else value
    else:
        order = sorted(members, key=lambda m: (typing.get_origin(m) or m) is str)  # str last: it takes anything
        out, ok = None, False
        for member in order:
            try:
                out = _from_text(value, member) if isinstance(value, str) else _fits(value, member)
                ok = True
                break
            except (ValueError, json.JSONDecodeError):
                continue
        if not ok:
            raise ConfigValueError(f"{name}={value!r}: expected {describe_type(hint)}")
    if choices and isinstance(out, str) and out not in choices:
        raise ConfigValueError(f"{name}={out!r}: expected one of {', '.join(map(repr, choices))}"
                               + (f" (or {describe_type(hint)})" if len(members) > 1 else ""))
    return out


_RANGE_WORDS = {"ge": (">=", lambda v, b: v >= b), "gt": (">", lambda v, b: v > b),
                "le": ("<=", lambda v, b: v <= b), "lt": ("<", lambda v, b: v < b)}


def range_error(name: str, value: Any, bounds: dict[str, float]) -> str | None:
    """'window_chars=-1: must be >= 0' when a number is outside its field's declared range (None passes)."""
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if value != value:  # NaN
        return f"{name}={value}: not a number"
    failed = [f"{word} {bound:g}" for key, bound in bounds.items()
              for word, ok in [_RANGE_WORDS[key]] if not ok(value, bound)]
    return f"{name}={value!r}: must be {' and '.join(failed)}" if failed else None


def describe_range(bounds: dict[str, float]) -> str:
    return " and ".join(f"{_RANGE_WORDS[k][0]} {v:g}" for k, v in bounds.items())


# ------------------------------------------------------------------------------------------------ base
@dataclass
class StageConfig:
    """Base of every stage's configuration: profile, data_dir, typed values and path resolution."""

    PROFILE_OVERRIDES: ClassVar[dict[str, dict[str, Any]]] = {}
    PATH_FIELDS: ClassVar[dict[str, str]] = {}
    # what the stage reads and what it (re)writes: checked against each other and data_dir (check_paths)
    INPUT_FIELDS: ClassVar[tuple[str, ...]] = ()
    OUTPUT_FIELDS: ClassVar[tuple[str, ...]] = ()

    profile: str = option("full", "demo: offline, CPU, embedded model; full: arXiv, Groq, Llama-3-8B, GPU; "
                          "original: full with the original project's method (the baseline)",
                          choices=PROFILES)
    data_dir: str = option("data", "every input and output defaults to a fixed name under it")

    def __post_init__(self) -> None:
        check_profile(self.profile)
        hints = self.type_hints()
        for f in fields(self):
            setattr(self, f.name, coerce(f.name, getattr(self, f.name), hints[f.name], f.metadata.get("choices")))
        self.data_dir = str(resolve_data_dir(self.data_dir))
        paths = self.paths
        for name, attr in self.PATH_FIELDS.items():
            if getattr(self, name) is None:
                setattr(self, name, str(getattr(paths, attr)))
        problems = self.range_problems() + self.path_problems()
        if problems:
            raise ConfigValueError("; ".join(problems))

    def range_problems(self) -> list[str]:
        """Every number outside its field's declared range (option(..., ge=/gt=/le=/lt=))."""
        out = []
        for f in fields(self):
            bounds = f.metadata.get("range")
            why = range_error(f.name, getattr(self, f.name), bounds) if bounds else None
            if why:
                out.append(why)
        return out

    def path_values(self, names: tuple[str, ...]) -> list[tuple[str, str]]:
        """(field, path) of the named fields that are set; a field naming a hub id (not a path) is left out."""
        out = []
        for name in names:
            value = getattr(self, name)
            if not value:
                continue
            if name not in self.PATH_FIELDS and not Path(value).expanduser().exists():
                continue   # e.g. base_model given as a hub id
            out.append((name, value))
        return out

    def path_problems(self) -> list[str]:
        """An output equal to, or containing, data_dir; an output equal to, inside or containing an input or
        another output: each would overwrite (or delete) what the stage did not make."""
        outs, ins = self.path_values(self.OUTPUT_FIELDS), self.path_values(self.INPUT_FIELDS)
        problems = []
        for i, (name, value) in enumerate(outs):
            if contains(value, self.data_dir):
                where = "is" if Path(value).resolve() == Path(self.data_dir).resolve() else "contains"
                problems.append(f"{name}={value} {where} data_dir {self.data_dir}: writing it would replace "
                                "everything there")
                continue
            for other, theirs in ins + outs[i + 1:]:
                if other == name:
                    continue
                if contains(value, theirs) or contains(theirs, value):
                    role = "input" if (other, theirs) in ins else "output"
                    rel = "is" if Path(value).resolve() == Path(theirs).resolve() else \
                        "contains" if contains(value, theirs) else "is inside"
                    problems.append(f"{name}={value} {rel} the {role} {other}={theirs}: it would be overwritten; "
                                    "give each its own path")
        return problems

    @property
    def paths(self) -> DataPaths:
        return DataPaths(self.data_dir)

    @classmethod
    def type_hints(cls) -> dict[str, Any]:
        return typing.get_type_hints(cls)

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def check_params(cls, params: dict[str, Any]) -> dict[str, Any]:
        """Names known and values typed (strings parsed); `None` stays `None` (= the profile's default)."""
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(params) - set(known))
        if unknown:
            raise TypeError(f"{cls.__name__} has no parameter(s) {', '.join(unknown)}; "
                            f"known: {', '.join(sorted(known))}")
        hints = cls.type_hints()
        return {k: None if v is None else coerce(k, v, hints[k], known[k].metadata.get("choices"))
                for k, v in params.items()}

    @classmethod
    def overrides(cls, profile: str) -> dict[str, Any]:
        """What `profile` changes from the field defaults."""
        return dict(cls.PROFILE_OVERRIDES.get(profile, {}))

    @classmethod
    def from_params(cls, profile: str = "demo", **params: Any):
        """Build from notebook parameters: `None` values fall back to the profile, then the field default."""
        check_profile(profile)
        values = dict(cls.overrides(profile))
        values.update({k: v for k, v in cls.check_params(params).items() if v is not None})
        return cls(profile=profile, **values)

    @classmethod
    def from_notebook(cls, namespace: Mapping[str, Any]):
        """Build from a notebook's variables (`globals()`): `profile` and every name that is one of this config's
        fields (the parameters cell's, as papermill injected them); any other name is not read. So each parameter
        is written once, in the parameters cell (tests/test_notebooks.py checks the names against the fields)."""
        params = {name: namespace[name] for name in cls.field_names() if name in namespace and name != "profile"}
        return cls.from_params(profile=namespace.get("profile", "demo"), **params)

    @classmethod
    def defaults(cls, profile: str) -> dict[str, Any]:
        """Every parameter's effective default under `profile` (what the docs/stages table shows)."""
        check_profile(profile)
        out = {}
        for f in fields(cls):
            if f.default is not dataclasses.MISSING:
                out[f.name] = f.default
            elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
                out[f.name] = f.default_factory()  # type: ignore[misc]
        out.update(cls.overrides(profile))
        out["profile"] = profile
        return out

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def show(self) -> None:
        """Print the resolved configuration, one `name = value` a line (for the notebook); credentials in a
        value (a URL's user:password@, a key) are masked."""
        from .redact import redact

        for k, v in self.to_dict().items():
            print(f"{k:>24} = {redact(repr(v))}")


# ------------------------------------------------------------------------------------------------ docs
def _cell(value: Any) -> str:
    text = "`None`" if value is None else f"`{value!r}`" if isinstance(value, str) else f"`{json.dumps(value)}`"
    return text.replace("|", "\\|")


def parameter_table(cls: type[StageConfig], skip: tuple[str, ...] = ("profile", "data_dir")) -> str:
    """The Markdown table of a stage's parameters: name, full default, demo default, help (docs/stages/*.md)."""
    full, demo = cls.defaults("full"), cls.defaults("demo")
    rows = ["| parameter | `full` | `demo` | what |", "|---|---|---|---|"]
    for f in fields(cls):
        if f.name in skip:
            continue
        d = _cell(demo[f.name]) if demo[f.name] != full[f.name] else "same"
        bounds = f.metadata.get("range")
        what = f.metadata.get("help", "") + (f" ({describe_range(bounds)})" if bounds else "")
        rows.append(f"| `{f.name}` | {_cell(full[f.name])} | {d} | {what} |")
    return "\n".join(rows)


# ------------------------------------------------------------------------------------------------ command line
def build_arg_parser(cls: type[StageConfig], prog: str, description: str = "") -> argparse.ArgumentParser:
    """`--name value` for every field (help text from the field), plus --print-config."""
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("--print-config", action="store_true",
                   help="print the resolved configuration as JSON and exit")
    for f in fields(cls):
        flag = f"--{f.name}"
        extra = [f"--{f.name.replace('_', '-')}"] if "_" in f.name else []
        p.add_argument(flag, *extra, dest=f.name, default=None, metavar="VALUE", help=f.metadata.get("help"))
    return p


def config_from_argv(cls: type[StageConfig], argv: list[str] | None, prog: str,
                     description: str = "") -> tuple[StageConfig, bool]:
    """Parse a stage's command line into its config; returns (cfg, print_only)."""
    ns = vars(build_arg_parser(cls, prog, description).parse_args(argv))
    print_only = ns.pop("print_config")
    profile = ns.pop("profile") or "demo"
    return cls.from_params(profile=profile, **ns), print_only


def stage_main(cls: type[StageConfig], run, argv: list[str] | None = None, prog: str = "",
               description: str = "") -> int:
    """The body of `python -m nbutils.<stage>`: --print-config prints and exits, else run(cfg) and its summary."""
    try:
        cfg, print_only = config_from_argv(cls, argv, prog or cls.__name__, description)
    except (ConfigValueError, TypeError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if print_only:
        print(json.dumps(cfg.to_dict(), indent=2, default=str))
        return 0
    from .io import NotOurs
    from .lock import DataDirBusy

    try:
        result = run(cfg)
    except (DataDirBusy, NotOurs) as e:   # another run holds the data_dir; an output is not ours to replace
        print(f"error: {e}", file=sys.stderr)
        return 2
    summary = getattr(result, "summary", None)
    if callable(summary):
        print(summary())
    return 0


__all__ = ["PROFILES", "ConfigValueError", "StageConfig", "build_arg_parser", "check_profile", "coerce",
           "config_from_argv", "field", "option", "parameter_table", "parse_literal", "stage_main"]
