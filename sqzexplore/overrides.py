"""Config overrides: text read as a typed config value, and dotted keys set on a typed config.

One parser (`parse_value`) reads every config value given as text: experiment arguments
(`parse_arg`, `"sr=0.25,runlocal"`), `sqz train --config.KEY=VALUE` and `sqz describe --set
FIELD=VALUE` (both `parse_override`), so the same text gives the same value, or the same one-line
error, on every path. By the field's type:

- bool: one of `BOOL_WORDS` (true/yes/on/1, false/no/off/0, any case);
- int: an integer (`12`, `-3`); float: a number (`0.25`, `1e-3`, `2`);
- tuple: a comma-separated list (`fire4,fire8`, also in brackets: `(fire4, fire8)`) or a Python
  literal (`('fire4', 'fire8')`, `((16,64,64),(16,64,64))`); one item (`fire4`) is a 1-tuple,
  `()` the empty tuple; items that are Python literals (`1`, `'a'`) are read as such;
- str: the text (a quoted literal such as `'abc'` loses its quotes);
- the `auto | true | false` settings (fields of type object): a boolean word is that boolean,
  anything else the text (`config.tristate` checks it);
- `none` (any case) is None where the field may be None (`fire_widths`, `data.data_dir`, ...).

A value that does not parse is a `ConfigError` `NAME must be ALLOWED, got 'TEXT'`, NAME being the
key (`config.model.freq`) or the experiment argument; a spec field's ALLOWED is its metadata's
range (`an integer >= 1`). Values are then set through `apply_overrides`, the one path that sets
typed config values (sweep trials and fixed values, `sqz train`, `sqz describe`, the check of a
loaded experiment), which refuses unknown keys and values of the wrong type.
"""

from __future__ import annotations

import ast
import difflib
from collections.abc import Iterator, Mapping
from typing import Any

import ml_collections

from sqzexplore.models.spec import FieldInfo, field_infos

# The one set of boolean words: config values, experiment arguments and the auto|true|false
# settings all read these.
BOOL_WORDS = {"true": True, "yes": True, "on": True, "1": True}
BOOL_WORDS |= {"false": False, "no": False, "off": False, "0": False}
BOOL_ALLOWED = "true or false (or yes/no, on/off, 1/0)"
TUPLE_ALLOWED = "a tuple such as a,b or ('a', 'b')"


class ConfigError(ValueError):
    """An invalid experiment config; the message names the field and what is allowed."""


class UnknownKeyError(ConfigError, KeyError):
    """A config key the defaults do not have. `str()` quotes the key (what the sweep checks
    parse); `plain` is the one line `sqz train` prints:
    `unknown config key model.squeez_ratio; did you mean model.squeeze_ratio?`."""

    def __init__(self, key: str, close: str | None, known: list[str], where: str = ""):
        self.key, self.close, self.known, self.where = key, close, known, where
        super().__init__(self._format(repr))

    def _format(self, q) -> str:
        message = f"unknown config key {q(self.key)}"
        if self.close:
            return f"{message}; did you mean {q(self.close)}?"
        if self.known:
            of = f" of {self.where}" if self.where else ""
            return f"{message}; known keys{of}: {', '.join(self.known)}"
        return message

    def __str__(self) -> str:  # KeyError's own str() would add quotes around the message
        return self.args[0]

    @property
    def plain(self) -> str:
        return self._format(str)


def bool_word(text: str) -> bool | None:
    """The boolean a word of `BOOL_WORDS` names (None for any other text)."""
    return BOOL_WORDS.get(text.strip().lower())


# ---------------------------------------------------------------------------------- text -> value
def parse_value(
    text: str, kind: type, name: str, *, optional: bool = False, info: FieldInfo | None = None
) -> Any:
    """`text` read as a value of type `kind` by the rules in this module's docstring.

    `name` is what an error calls the field; `optional`: `none` means None; `info`: a spec
    field's metadata, whose allowed range an error quotes. ConfigError when the text is not a
    value of that type (a range is checked later, by the spec or `config.validate_config`)."""
    raw = text.strip()
    if optional and raw.lower() == "none":
        return None

    def bad(allowed: str) -> ConfigError:
        either = f"{allowed} or none" if optional else allowed
        return ConfigError(f"{name} must be {either}, got {text!r}")

    if kind is bool:
        value = bool_word(raw)
        if value is None:
            raise bad(BOOL_ALLOWED)
        return value
    if kind in (int, float):
        try:
            return kind(raw)
        except ValueError:
            raise bad(_number_allowed(kind, info)) from None
    if kind in (tuple, list):
        value = _tuple(raw)
        if value is None:
            raise bad(info.allowed if info is not None else TUPLE_ALLOWED)
        return value
    if kind is object:  # "auto" or a boolean
        value = bool_word(raw)
        return _text(raw) if value is None else value
    if kind in (str, type(None)):
        return _text(raw)
    try:  # any other type a user's experiment declares (a dict, ...): its Python literal
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = None
    if not isinstance(value, kind):
        raise bad(f"a {kind.__name__} literal")
    return value


def _number_allowed(kind: type, info: FieldInfo | None) -> str:
    if kind is int:
        return info.allowed if info is not None else "an integer"
    ranged = info is not None and info.low is not None and info.high is not None
    return f"a number {info.allowed}" if ranged else "a number"


_NOT_LITERAL = object()


def _literal(text: str) -> Any:
    """The Python literal `text` spells, or `_NOT_LITERAL`."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return _NOT_LITERAL


def _text(raw: str) -> str:
    """The text, or the string a quoted literal (`'abc'`, `"abc"`) spells."""
    if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "'\"":
        value = _literal(raw)
        if isinstance(value, str):
            return value
    return raw


def _tuple(raw: str) -> tuple | None:
    """A tuple from a Python literal or a comma-separated list (None: neither)."""
    value = _literal(raw)
    if value is _NOT_LITERAL:
        inner = raw[1:-1] if _enclosed(raw) else raw
        value = [_item(part) for part in split_top_level(inner) if part.strip()]
    if isinstance(value, (list, tuple)):
        return _deep_tuple(value)
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return (value,)  # one item: `pool_after=fire4`, `tags='a'`
    return None


def _enclosed(raw: str) -> bool:
    """Whether `raw` is one bracketed group: `(a, b)` or `[a, b]`, not `(a),(b)`."""
    if raw[:1] + raw[-1:] not in ("()", "[]"):
        return False
    depth = 0
    for i, ch in enumerate(raw):
        depth += (ch in "([{") - (ch in ")]}")
        if depth == 0 and i < len(raw) - 1:
            return False
    return True


def _item(part: str) -> Any:
    value = _literal(part.strip())
    if isinstance(value, (str, int, float, tuple, list)):
        return value
    return part.strip()


def _deep_tuple(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return tuple(_deep_tuple(v) for v in value)
    return value


def split_top_level(text: str) -> list[str]:
    """`text` split at the commas outside brackets and quotes (`a=(1,2),b` -> `a=(1,2)`, `b`)."""
    parts, depth, quote, start = [], 0, "", 0
    for i, ch in enumerate(text):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"" and text[start:i].rstrip()[-1:] in ("", "=", "(", "[", "{", ","):
            quote = ch  # a quote that opens a value (an apostrophe inside a word does not)
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth = max(0, depth - 1)
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts


# ---------------------------------------------------------------------------------- experiment args
def parse_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
    """Parse an experiment argument `"a=1,b=x,flag"` against typed defaults; unknown keys are an
    error.

    A bare key means True (for a boolean). Values are read by `parse_value` as the type of their
    default, as `--config.KEY=VALUE` reads them; a tuple's items may follow its key
    (`pool=fire4,fire8,runlocal`: pool is ('fire4', 'fire8')) or be bracketed.
    """
    out = ml_collections.ConfigDict(defaults)
    for key, raw in _arg_items(arg or "", defaults):
        default = defaults[key]
        if raw is None:
            if not isinstance(default, bool):
                raise ConfigError(f"experiment argument {key!r} needs a value ({key}=...)")
            out[key] = True
            continue
        kind = tuple if isinstance(default, (tuple, list)) else type(default)
        out[key] = parse_value(raw, kind, f"experiment argument {key!r}", optional=default is None)
    return out


def _arg_items(arg: str, defaults: Mapping[str, Any]) -> Iterator[tuple[str, str | None]]:
    """(key, text or None for a bare key) of each item of an experiment argument."""
    items: list[list] = []
    for part in split_top_level(arg):
        part = part.strip()
        if not part:
            continue
        key, sep, raw = part.partition("=")
        key = key.strip()
        if not sep and key not in defaults and items and items[-1][1] is not None:
            last = defaults.get(items[-1][0])
            if isinstance(last, (tuple, list)):  # the next item of a tuple: `pool=fire4,fire8`
                items[-1][1] += f",{part}"
                continue
        if key not in defaults:
            raise ConfigError(
                f"unknown experiment argument {key!r}; allowed: "
                f"{', '.join(sorted(defaults)) or '(none)'}"
            )
        items.append([key, raw if sep else None])
    return ((key, raw) for key, raw in items)


# ---------------------------------------------------------------------------------- config keys
def _leaf(config: ml_collections.ConfigDict, dotted: str):
    """(the section holding `dotted`, its parent path, its field name); UnknownKeyError if none."""
    parent, _, field = dotted.rpartition(".")
    node = config
    for part in parent.split(".") if parent else ():
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            raise unknown_key_error(config, dotted)
        node = node[part]
    if not isinstance(node, ml_collections.ConfigDict) or field not in node:
        raise unknown_key_error(config, dotted)
    return node, parent, field


def field_type(config: ml_collections.ConfigDict, dotted: str) -> type:
    """The declared type of the config field `dotted` (UnknownKeyError if there is none)."""
    node, _, field = _leaf(config, dotted)
    return node.get_type(field)


def _may_be_none(node: ml_collections.ConfigDict, field: str) -> bool:
    # None now, or a typed reference (`FieldReference(None, field_type=str)`, how the config
    # declares an optional field); an object-typed reference is an auto|true|false setting.
    ref = node._fields.get(field)
    typed = isinstance(ref, ml_collections.FieldReference) and ref.get_type() is not object
    return node[field] is None or typed


def parse_override(config: ml_collections.ConfigDict, dotted: str, text: str) -> Any:
    """The value of `--config.KEY=TEXT` (or `sqz describe --set`) read by `parse_value` as the
    field's declared type (a spec field's by its metadata). The key must exist (an
    `UnknownKeyError` if not); the value is then set through `apply_overrides`."""
    node, parent, field = _leaf(config, dotted)
    if isinstance(node[field], ml_collections.ConfigDict):
        first = sorted(node[field].keys())[0]
        raise ConfigError(
            f"--config.{dotted} is a section; override its keys, e.g. --config.{dotted}.{first}=..."
        )
    info = field_infos().get(field) if parent == "model" else None
    if info is not None:
        kind, optional = info.kind, info.optional
    else:
        kind, optional = node.get_type(field), _may_be_none(node, field)
    return parse_value(text, kind, f"config.{dotted}", optional=optional, info=info)


def apply_overrides(config: ml_collections.ConfigDict, overrides: Mapping[str, Any]) -> None:
    """Set dotted keys (`model.squeeze_ratio`) on a config; unknown keys are an error.

    The one override path for typed configs: a sweep's fixed values and every trial's design
    point (`typed_config` + this, in sweep/runconfig.py), `sqz describe --set`, and the check of
    a loaded experiment (`check_known_keys`) and `sqz train --config.KEY=VALUE` (its text read
    by `parse_override`) all set values here.

    `ConfigDict.update_from_flattened_dict` on the config locked for the update, so a misspelt key
    is refused (not added: an `UnknownKeyError` with `.key`, `.close` and `.known`) and a value of
    the wrong type is refused by the field's type (a ConfigError naming the key).
    """
    was_locked = config.is_locked
    config.lock()
    try:
        for dotted, value in overrides.items():
            try:
                config.update_from_flattened_dict(
                    {dotted: tuple(value) if isinstance(value, list) else value}
                )
            except KeyError:
                raise unknown_key_error(config, dotted) from None
            except (TypeError, ValueError) as e:
                raise ConfigError(_type_message(config, dotted, value, e)) from None
    finally:
        if not was_locked:
            config.unlock()


def _type_message(config: ml_collections.ConfigDict, dotted: str, value: Any, e: Exception) -> str:
    """`config.model.freq must be an integer >= 1, got 1.5`: a value its field's type refuses,
    with the spec field's allowed range where there is one."""
    section, _, field = dotted.rpartition(".")
    info = field_infos().get(field) if section == "model" else None
    if info is not None:
        return f"config.{dotted} must be {info.allowed}, got {value!r}"
    current = config
    for part in dotted.split("."):
        current = current[part]
    kinds = {int: "an integer", float: "a number", bool: BOOL_ALLOWED, str: "a string"}
    kind = kinds.get(type(current))
    if kind is None:
        return f"config.{dotted}: {' '.join(str(e).split())}"
    return f"config.{dotted} must be {kind} (the field's type), got {value!r}"


def unknown_key_error(config: ml_collections.ConfigDict, dotted: str) -> ConfigError:
    """The error for `dotted`, a key `config` does not have: the first missing part, a close
    match or the keys that do exist there."""
    node, parts = config, dotted.split(".")
    for depth, part in enumerate(parts):
        if isinstance(node, ml_collections.ConfigDict) and part in node:
            node = node[part]
            continue
        prefix = ".".join(parts[:depth])
        if not isinstance(node, ml_collections.ConfigDict):
            return ConfigError(
                f"unknown config key {dotted}: config.{prefix} is a value, not a section"
            )
        keys = sorted(str(k) for k in node)
        where = f"{prefix}." if prefix else ""
        close = difflib.get_close_matches(part, keys, 1, 0.75)
        return UnknownKeyError(where + part, where + close[0] if close else None, keys, prefix)
    return UnknownKeyError(dotted, None, [])
