"""`python -m launch.X <command> [options]` for the multi-command entry points and tools.

Kept free of JAX so that a tool can parse its arguments (and, for the
benchmark, spawn worker processes) before anything initialises a backend.
"""

from __future__ import annotations

import argparse
from typing import Callable, Mapping

# name -> (add_arguments(parser), run(args) -> exit status)
Subcommands = Mapping[str, tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]]


def run_subcommands(description: str, subcommands: Subcommands, argv: list[str] | None = None) -> int:
    """Parses ``argv`` (default sys.argv[1:]) into one subcommand and runs it.

    A subcommand whose parser sets ``config_overrides=True`` (``p.set_defaults``)
    also takes ``--config.FIELD=VALUE`` overrides, handed over as ``args.overrides``.
    """
    parser = argparse.ArgumentParser(description=description)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (add_arguments, run) in subcommands.items():
        p = sub.add_parser(name)
        add_arguments(p)
        p.set_defaults(run=run)
    args, extra = parser.parse_known_args(argv)
    overrides = [a for a in extra if a.startswith("--config.")]
    if len(overrides) != len(extra) or (overrides and not getattr(args, "config_overrides", False)):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.overrides = overrides
    return args.run(args)


def load_config(spec: str, overrides=()):
    """``PATH[:ARG]`` plus ``--config.FIELD=VALUE`` overrides -> the locked config,
    parsed exactly as ``--config=`` of launch.train (ml_collections' config_flags)."""
    from absl import flags
    from ml_collections import config_flags

    argv = ["load_config", f"--config={spec}", *overrides]
    values = flags.FlagValues()
    # sys_argv: the override flags are defined from the arguments they come in.
    config_flags.DEFINE_config_file("config", None, "experiment config file", flag_values=values,
                                    lock_config=True, sys_argv=argv)
    values(argv)
    config = values.config
    config.to_dict()  # a file that failed to load raises its error here, not at first use
    return config
