"""Typed configuration: plain-Python config files plus --key=value, with no silent failures.

    python train.py config/train_fineweb.py --batch_size=8 --compile=False

Each script declares a dataclass whose fields are the keys (see `key`). Arguments apply in order:
a path ending in .py is executed as a config file and every top-level name it assigns must be a
key; `--key=value` overrides one key, and a bare `--key` sets a bool key to True (as argparse's
store_true flags do). Unknown keys name the closest valid key, type mismatches say
what was expected, a value outside a key's declared choices lists them, and `--help` lists every
key with its type, default, meaning and choices.
"""
from __future__ import annotations

import ast
import dataclasses
import difflib
import shlex
import sys
import traceback
import types
import typing
from typing import Any, Callable

from fineweb_gpt.errors import UserError


class ConfigError(UserError):
    """A user mistake in a config file or on the command line."""


def key(default: Any, help: str, choices: tuple | None = None, range: str | None = None) -> Any:
    """A config field with its one-line meaning (shown by --help) and, where it has them, the values it
    allows: `choices`, or for a number a `range` written as an interval, "[1, inf)" or "(0, 1]". A key
    typed `int | str` takes a number in its range or one of its choices (batch_size: 8 or 'auto')."""
    if range is not None:
        _parse_range(range)  # a malformed declaration fails at import, not at a user's run
    return dataclasses.field(default=default, metadata={"help": help, "choices": choices, "range": range})


def keys_of(cls: type) -> type:
    """A dataclass holding cls's fields (each default, type, meaning and allowed values) and nothing else, for
    a script's config to inherit: train.py's model keys are GPTConfig's fields, declared once in model.py."""
    return dataclasses.make_dataclass(f"{cls.__name__}Keys", [
        (f.name, f.type, dataclasses.field(default=f.default, metadata=f.metadata)) for f in dataclasses.fields(cls)])


def _parse_range(spec: str) -> tuple[float, float, bool, bool]:
    """(low, high, low included, high included) of "[a, b)"-style intervals."""
    lo, hi = (float(x) for x in spec[1:-1].split(","))
    if spec[0] not in "[(" or spec[-1] not in "])" or lo > hi:
        raise ValueError(f"bad range declaration {spec!r}")
    return lo, hi, spec[0] == "[", spec[-1] == "]"


def _range_text(spec: str) -> str:
    lo, hi, lo_in, hi_in = _parse_range(spec)
    num = lambda x: f"{x:g}"  # noqa: E731
    if hi == float("inf"):
        return f"{'>=' if lo_in else '>'} {num(lo)}"
    return f"in {spec[0]}{num(lo)}, {num(hi)}{spec[-1]}"


def value_problems(cfg: Any) -> list[str]:
    """What is wrong with cfg's values against the choices and ranges their keys declare."""
    problems = []
    for f in dataclasses.fields(cfg):
        value, choices, spec = getattr(cfg, f.name), f.metadata.get("choices"), f.metadata.get("range")
        numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
        if choices and value not in choices and not (spec and numeric):  # a number or a word: range or choices
            close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            allowed = f"one of {', '.join(repr(c) for c in choices)}"
            if spec:
                allowed = f"{_range_text(spec)} or {' or '.join(repr(c) for c in choices)}"
            problems.append(f"'{f.name}' must be {allowed}, got {value!r}{hint}")
        if spec and numeric:
            lo, hi, lo_in, hi_in = _parse_range(spec)
            if not ((lo <= value if lo_in else lo < value) and (value <= hi if hi_in else value < hi)):
                problems.append(f"'{f.name}' must be {_range_text(spec)}, got {value!r}")
    return problems


def check_values(cfg: Any, extra: list[str] = (), title: str = "invalid config:") -> None:
    """Raise one ConfigError listing every value outside its key's choices or range, and the `extra`
    problems a script finds between keys."""
    problems = value_problems(cfg) + list(extra)
    if len(problems) == 1:
        raise ConfigError(problems[0])
    if problems:
        raise ConfigError("\n  ".join([title] + problems))


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _unwrap_optional(typ: Any) -> tuple[Any, bool]:
    """(inner type, whether None is allowed) for X, Optional[X] and X | None."""
    if typing.get_origin(typ) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(typ) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return typ, False


def _is_int_or_str(typ: Any) -> bool:
    return typing.get_origin(typ) in (typing.Union, types.UnionType) and set(typing.get_args(typ)) == {int, str}


def _type_name(typ: Any) -> str:
    inner, optional = _unwrap_optional(typ)
    name = "int or str" if _is_int_or_str(inner) else getattr(inner, "__name__", str(inner))
    return f"{name} or None" if optional else name


def _unknown_key(name: str, valid: list[str], where: str) -> ConfigError:
    close = difflib.get_close_matches(name, valid, n=1, cutoff=0.6)
    hint = f"did you mean '{close[0]}'?" if close else "run with --help to list the valid keys"
    return ConfigError(f"unknown config key '{name}' {where}; {hint}")


def coerce(name: str, value: Any, typ: Any, from_cli: bool) -> Any:
    """Check `value` against the field type; a string from the command line is parsed first."""
    inner, optional = _unwrap_optional(typ)
    expected = f"'{name}' expects {_type_name(typ)}"
    if _is_int_or_str(inner) and not optional:
        return _coerce_int_or_str(name, value, from_cli, expected)
    if from_cli:
        if value == "None" and optional:
            return None
        if inner is str:
            return value
        if inner is bool and value.lower() in ("true", "false"):
            return value.lower() == "true"
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            raise ConfigError(f"{expected}, got {value!r}") from None
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{expected}, got None")
    if inner is bool:
        if isinstance(value, bool):
            return value
    elif inner is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():  # 5e3 is a fine way to write 5000
            return int(value)
    elif inner is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif inner is str:
        if isinstance(value, str):
            return value
    else:
        raise TypeError(f"unsupported config field type {typ!r} for {name}")
    raise ConfigError(f"{expected}, got {type(value).__name__} {value!r}")


def _coerce_int_or_str(name: str, value: Any, from_cli: bool, expected: str) -> int | str:
    """A number, or a word (which words: the key's choices, checked with the other values)."""
    if from_cli:
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            return value  # a bare word such as auto
    if isinstance(value, str):
        return value
    try:
        return coerce(name, value, int, from_cli=False)
    except ConfigError:
        raise ConfigError(f"{expected}, got {type(value).__name__} {value!r}") from None


def _exec_config_file(path: str) -> dict[str, Any]:
    try:
        with open(path) as f:
            source = f.read()
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
    namespace: dict[str, Any] = {}
    try:
        tree = ast.parse(source, path)
    except SyntaxError as e:
        raise ConfigError(f"{path}:{e.lineno}: invalid Python in the config file ({e.msg}): {(e.text or '').strip()}") from None
    _refuse_statements_that_set_nothing(tree, source, path)
    try:
        exec(compile(tree, path, "exec"), namespace)
    except Exception as e:  # a NameError, a failed import, ...: point at the config file's own line
        line = next((fr.lineno for fr in reversed(traceback.extract_tb(e.__traceback__)) if fr.filename == path), "?")
        raise ConfigError(f"{path}:{line}: running the config file raised {type(e).__name__}: {e}") from None
    return {k: v for k, v in namespace.items()
            if not k.startswith("_") and not isinstance(v, (types.ModuleType, types.FunctionType, type))}


def _refuse_statements_that_set_nothing(tree: ast.Module, source: str, path: str) -> None:
    """A top-level line that assigns nothing would be silently ignored: a bare annotation (YAML's
    `max_iters: 2` is valid Python) or a bare expression. Each is an error naming its line."""
    for i, stmt in enumerate(tree.body):
        text = (ast.get_source_segment(source, stmt) or "").strip()
        if isinstance(stmt, ast.AnnAssign) and stmt.value is None and isinstance(stmt.target, ast.Name):
            raise ConfigError(f"{path}:{stmt.lineno}: '{text}' is an annotation and sets nothing (YAML style?); "
                              f"write {stmt.target.id} = {ast.get_source_segment(source, stmt.annotation)}")
        docstring = i == 0 and isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant) \
            and isinstance(stmt.value.value, str)
        if isinstance(stmt, (ast.Expr, ast.AnnAssign)) and not docstring and not (
                isinstance(stmt, ast.AnnAssign) and stmt.value is not None):
            raise ConfigError(f"{path}:{stmt.lineno}: '{text}' sets no config key; write key = value")


def help_text(cls: type, prog: str) -> str:
    hints = _field_types(cls)
    lines = [f"usage: {prog} [config_file.py ...] [--key=value ...]",
             "(a bare --key sets a bool key to True)", "", "keys:"]
    for f in dataclasses.fields(cls):
        choices, spec = f.metadata.get("choices"), f.metadata.get("range")
        words = "|".join(str(c) for c in choices or ())
        allowed = (f" [{_range_text(spec)} or {words}]" if spec and choices else f" [{words}]" if choices
                   else f" [{_range_text(spec)}]" if spec else "")
        lines.append(f"  --{f.name}={f.default!r}  ({_type_name(hints[f.name])})  {f.metadata.get('help', '')}{allowed}")
    return "\n".join(lines)


def _is_bool(typ: Any) -> bool:
    return _unwrap_optional(typ)[0] is bool


def flag(name: str, value: Any) -> str:
    """`--name=value` as a shell reads it back: quoted where the value holds spaces or shell characters."""
    return shlex.quote(f"--{name}={value}")


def _missing_equals(name: str, nxt: str | None, typ: Any, default: Any) -> ConfigError:
    """`--key value` or a trailing `--key`: the fix, written so that pasting it works."""
    if nxt is not None and not nxt.startswith("-"):
        return ConfigError(f"write {flag(name, nxt)} (with '='), not '--{name} {nxt}'")
    return ConfigError(f"--{name} needs a value ({_type_name(typ)}); for the default, write {flag(name, default)} "
                       f"(your value goes after the '=')")


def parse_config(cls: type, argv: list[str], prog: str = "train.py"):
    """Build `cls` from config files and --key=value arguments (see module docstring).

    Prints help and exits on --help / -h; raises ConfigError on any mistake.
    """
    hints = _field_types(cls)
    valid = [f.name for f in dataclasses.fields(cls)]
    defaults = {f.name: f.default for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    for i, arg in enumerate(argv):
        if arg in ("-h", "--help"):
            print(help_text(cls, prog))
            sys.exit(0)
        if not arg.startswith("--"):
            if not arg.endswith(".py"):
                raise ConfigError(f"unexpected argument {arg!r}: pass config files (*.py) or --key=value")
            for name, value in _exec_config_file(arg).items():
                if name not in hints:
                    raise _unknown_key(name, valid, f"in config file {arg}")
                values[name] = coerce(name, value, hints[name], from_cli=False)
            continue
        name, sep, value = arg[2:].partition("=")
        if name not in hints:
            raise _unknown_key(name, valid, "on the command line")
        if not sep:
            nxt = argv[i + 1] if i + 1 < len(argv) else None
            if _is_bool(hints[name]) and not (nxt is not None and nxt.lower() in ("true", "false", "none")):
                values[name] = True  # a bare flag, as argparse's store_true
                continue
            raise _missing_equals(name, nxt, hints[name], defaults[name])
        values[name] = coerce(name, value, hints[name], from_cli=True)
    cfg = cls(**values)
    check_values(cfg)
    cfg.explicit_keys = frozenset(values)  # what the user set (files or flags), so that a dial never overrides it
    return cfg


def explicit_keys(cfg: Any) -> frozenset[str]:
    """The keys parse_config saw set; for a config built in code, those that differ from their defaults."""
    given = getattr(cfg, "explicit_keys", None)
    if given is not None:
        return given
    return frozenset(f.name for f in dataclasses.fields(cfg) if getattr(cfg, f.name) != f.default)



def cli(cls: type, prog: str, argv: list[str] | None = None):
    """parse_config for a script's main: a mistake exits with the message, not a traceback."""
    try:
        return parse_config(cls, sys.argv[1:] if argv is None else argv, prog)
    except ConfigError as e:
        sys.exit(f"{prog}: config error: {e}")


def run_main(cls: type, prog: str, run: Callable[[Any], Any], argv: list[str] | None = None) -> Any:
    """A script's main(): its config from argv (see cli), then run(cfg). A UserError ends the script with its
    one-line message; any other exception is a bug and keeps its traceback."""
    cfg = cli(cls, prog, argv)
    try:
        return run(cfg)
    except UserError as e:
        sys.exit(f"{prog}: error: {e}")
