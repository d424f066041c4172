"""``main.py --config_help``: every config field with its default and its one-line comment, section by
section; with ``--config FILE`` also that file's value of each field, beside the default where they differ."""
from __future__ import annotations

import importlib.util
from pathlib import Path

from scoresde.cli.schema import field_comments, leaf_fields, schema_fields, unknown_field

_MISSING = object()


def _line(path: str, default, comment: str, values: dict | None) -> str:
    """``  training.n_iters = 2000  (default 1300001)      # comment``."""
    if values is None:
        text = f"  {path} = {default!r}"
    else:
        value = values.get(path, _MISSING)
        shown = "(missing)" if value is _MISSING else repr(value)
        text = f"  {path} = {shown}" + ("" if value == default else f"  (default {default!r})")
    return text.ljust(48) + f"  # {comment}"


def config_help(config=None) -> str:
    """Every field of ``configs/default.py`` with its default and comment, grouped by section; with
    ``config`` (a loaded config file), the file's value of each field, its default beside it where they
    differ, and at the end any field the file has that is not a config field."""
    comments, defaults = field_comments(), schema_fields()
    values = None if config is None else leaf_fields(config)
    ordered = [p for p in comments if p in defaults] + [p for p in defaults if p not in comments]
    lines, section = [], None
    if values is not None:
        lines.append("the config file's values; (default ...) where it differs from configs/default.py")
    for path in ordered:
        head = path.rpartition(".")[0]
        if head != section:
            section = head
            lines.append(f"\n[{section or 'top level'}]")
        lines.append(_line(path, defaults[path], comments.get(path, ""), values))
    unknown = [p for p in values or () if p not in defaults]
    if unknown:
        lines.append("\n[not config fields]")
        lines += [f"  {unknown_field(path, defaults)}" for path in unknown]
    return "\n".join(lines).lstrip("\n")


def config_file_argument(argv: list[str]) -> str | None:
    """The value of ``--config FILE[:ARG]`` / ``--config=FILE[:ARG]`` in ``argv`` (None without one)."""
    for i, arg in enumerate(argv[1:], start=1):
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--config="):
            return arg[len("--config="):]
    return None


def load_config_file(argv: list[str]):
    """The config that ``--config FILE[:ARG]`` in ``argv`` names, loaded as ``config_flags`` loads it (the
    file's ``get_config()``, or ``get_config(ARG)``), or None without ``--config``; a file that is
    missing or fails is a ``ValueError`` naming it."""
    value = config_file_argument(argv)
    if value is None:
        return None
    path, *arg = value.split(":", 1)           # everything after the first colon goes to get_config
    if not Path(path).is_file():
        raise ValueError(f"--config {path}: no such file")
    try:
        spec = importlib.util.spec_from_file_location("config_help_file", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module.get_config(*arg)
    except Exception as err:        # noqa: BLE001 -- the config file's own error, named with the file
        raise ValueError(f"cannot load the config file {path}: {type(err).__name__}: {err}") from err
