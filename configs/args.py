"""The config argument, one language for every config file.

``--config=configs/X.py:ARG`` hands ``ARG`` to ``get_config(ARG)``. Every config
file reads it with `parse_config_arg`: comma-separated items, each a flag
(``text_only``) or a setting (``seed=3``), optionally after one leading
positional choice (``configs/text_real.py:twitter2017,fixed,seed=2``). A word
that is none of these fails the same way in every config::

    ValueError: unknown option 'fixd' for configs/text_real.py; valid: fixed, adamw, mask, seed=<int>, ...
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any, Mapping, Sequence


@dataclasses.dataclass(frozen=True)
class Positional:
    """A required-first choice, e.g. the dataset of configs/text_real.py.

    ``default`` is used when the argument is empty; a non-empty argument must
    start with one of ``choices``.
    """

    name: str
    choices: tuple[str, ...]
    default: str


@dataclasses.dataclass(frozen=True)
class ConfigArg:
    flags: frozenset[str]
    settings: dict[str, Any]  # every setting: given ones parsed, the others at their defaults
    positional: str | None = None


def config_name(file: str) -> str:
    """``configs/<file name>``: how a config file is named in messages (pass ``__file__``)."""
    return f"configs/{pathlib.Path(file).name}"


def _valid(flags: Sequence[str], settings: Mapping[str, Any]) -> str:
    words = list(flags) + [f"{k}=<{type(v).__name__}>" for k, v in settings.items()]
    return ", ".join(words) if words else "none (this config takes no argument)"


def _parse_value(config: str, key: str, text: str, default: Any) -> Any:
    kind = type(default)
    try:
        if kind is bool:
            if text.lower() not in ("true", "false", "1", "0"):
                raise ValueError(text)
            return text.lower() in ("true", "1")
        return kind(text)
    except ValueError:
        raise ValueError(f"option {key}={text!r} for {config}: not a {kind.__name__}") from None


def parse_config_arg(
    arg: str | None,
    *,
    config: str,
    flags: Sequence[str] = (),
    settings: Mapping[str, Any] | None = None,
    positional: Positional | None = None,
) -> ConfigArg:
    """Parses a config argument.

    Args:
      arg: what follows ``configs/X.py:`` (None or "" for none).
      config: the config file's name for messages (`config_name(__file__)`).
      flags: the valid bare words.
      settings: ``{key: default}`` for the valid ``key=value`` items; the
        default's type (int, float, str, bool) parses the value.
      positional: a choice that must come first.

    Returns:
      The flags given, every setting (given or default) and the positional.

    Raises:
      ValueError: ``unknown option 'x' for configs/X.py; valid: ...`` for any
        item that is neither a flag nor a known setting; an unknown positional
        choice; a setting given twice or whose value does not parse.
    """
    settings = dict(settings or {})
    items = [item.strip() for item in (arg or "").split(",")]
    items = [item for item in items if item]
    chosen = None
    if positional is not None:
        chosen = items.pop(0) if items else positional.default
        if chosen not in positional.choices:
            raise ValueError(
                f"unknown {positional.name} {chosen!r} for {config}; valid: {', '.join(positional.choices)} "
                f"(the {positional.name} comes first, then options)"
            )
    given_flags: set[str] = set()
    given: set[str] = set()
    for item in items:
        key, sep, value = item.partition("=")
        if sep and key in settings:
            if key in given:
                raise ValueError(f"option {key!r} given twice for {config}")
            given.add(key)
            settings[key] = _parse_value(config, key, value, settings[key])
        elif not sep and item in flags:
            given_flags.add(item)
        elif sep and key in flags:
            raise ValueError(f"option {key!r} for {config} is a flag and takes no value")
        elif not sep and item in settings:
            raise ValueError(f"option {item!r} for {config} needs a value: {item}=<{type(settings[item]).__name__}>")
        else:
            raise ValueError(f"unknown option {key if sep else item!r} for {config}; valid: {_valid(flags, settings)}")
    return ConfigArg(frozenset(given_flags), settings, chosen)
