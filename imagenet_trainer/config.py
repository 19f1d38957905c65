"""One dataclass per script: its fields are the CLI flags and the YAML keys (a recipe is a YAML file of overrides).

Precedence: dataclass default < ``--config FILE.yaml`` < command-line flag. A field without a default is a required
flag (declare the dataclass ``kw_only`` so it may stand among fields with defaults); given empty, it counts as
missing. An unknown key, a key given twice, a number YAML 1.1 misreads (``010`` octal, ``1:30`` base 60), a bad
type or a missing required value is a one-line ``SystemExit`` that names the flag/key and the file it came from.
"""
from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import io
import re
import textwrap
import tokenize
import types
import typing
from pathlib import Path

import yaml

def _base_type(tp):
    """(python type, optional?) of a field annotation like ``int``, ``float | None``, ``Optional[str]``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0], True
    return tp, False


def _convert(value, tp, where: str):
    base, optional = _base_type(tp)
    if value is None and base is str and not optional:
        return ""  # YAML's null for a text field: our text fields all use "" for "not set"
    if value is None or (isinstance(value, str) and value.lower() in ("none", "null") and optional):
        if optional:
            return None
        raise SystemExit(f"error: {where} needs a {base.__name__}, got nothing")
    try:
        if base is bool:
            if isinstance(value, bool):
                return value
            if type(value) is int and value in (0, 1):  # YAML's 1 and 0, as the flags' "1" and "0"
                return bool(value)
            if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on"):
                return True
            if isinstance(value, str) and value.lower() in ("false", "0", "no", "off"):
                return False
            raise ValueError
        if base is int:
            if isinstance(value, (bool, float)):  # YAML's 2.0 is refused as the flag's "2.0" is: a count is exact
                raise ValueError
            return int(value)
        if base is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if base is str:
            if isinstance(value, (dict, list)):
                raise ValueError
            return str(value)
    except (TypeError, ValueError):
        pass
    else:
        raise SystemExit(f"error: {where}: unsupported field type {tp!r}")
    article = "an" if base.__name__[0] in "aeiou" else "a"
    raise SystemExit(f"error: {where} must be {article} {base.__name__}, got {value!r}")


def field_comments(cls) -> dict[str, str]:
    """{field: its trailing ``#`` comment} from the dataclass source: the units and the why, shown by --help, so
    the help and the code never disagree."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):  # no source (frozen app, REPL): flags still work, without help text
        return {}
    by_line = {tok.start[0]: tok.string.lstrip("#").strip()
               for tok in tokenize.generate_tokens(io.StringIO(source).readline) if tok.type == tokenize.COMMENT}
    comments = {}
    for node in ast.parse(source).body[0].body:  # the class body's own annotated fields, not lines in methods
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            found = [by_line[n] for n in range(node.lineno, node.end_lineno + 1) if n in by_line]
            if found:
                comments[node.target.id] = found[0]
    return comments


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line instead of argparse's usage dump
        raise SystemExit(f"error: {message} (see --help)")


# accelerate launch's options where it has no parser to read them from (another layout of accelerate.commands)
_LAUNCH_FALLBACK = {"cpu": False, "multi_gpu": False, "mixed_precision": True, "num_processes": True,
                    "num_machines": True, "machine_rank": True, "main_process_ip": True, "main_process_port": True,
                    "gpu_ids": True, "config_file": True, "use_fsdp": False, "dynamo_backend": True}
# launch options of DeepSpeed's that a script sets with a flag of its own: {launch option: the script's field}
_OWN_SPELLING = {"gradient_accumulation_steps": "grad_accum_steps", "gradient_clipping": "clip_grad"}
_FALSE = {"false", "no", "off", "0"}  # a no-value option's value, as written, that means "not set"
ACCELERATE_KEYS = ("compute_environment", "distributed_type")  # top-level keys of every accelerate config file
LAUNCH_HELP = ("Device, mixed precision and distribution (processes, machines, DDP, FSDP) are not flags of {script}: "
               "accelerate launch sets them (accelerate launch --mixed_precision bf16 --num_processes 8 {script} ..., "
               "or its --config_file: accelerate_configs/*.yaml).")


def launch_options() -> dict[str, bool]:
    """{accelerate launch option, as a field name: whether it takes a value}, read from accelerate's own parser
    (its names follow accelerate's version); _LAUNCH_FALLBACK where that does not import."""
    try:
        from accelerate.commands.launch import launch_command_parser  # noqa: PLC0415 (an error's path only)

        actions = launch_command_parser()._actions
    except Exception:  # noqa: BLE001 (any version's failure: the hint is a courtesy, the error stands)
        return dict(_LAUNCH_FALLBACK)
    return {s.removeprefix("--").replace("-", "_"): a.nargs != 0 for a in actions for s in a.option_strings
            if s.startswith("--") and s != "--help"}


def launch_option_error(name: str, value, script: str, fields, where: str) -> str | None:
    """The one line for accelerate launch's option ``name`` (a field name) given to ``script`` (``where``: the
    flag, or the --config key), with ``value`` (None: none given); None when it is no launch option, or a field."""
    options = launch_options()
    if name in fields or name not in options:
        return None
    if _OWN_SPELLING.get(name) in fields:
        return f"error: {where} is accelerate launch's DeepSpeed setting; {script}'s own is --{_OWN_SPELLING[name]}"
    if name == "config_file" and value is not None and is_recipe(Path(str(value)), fields):
        return (f"error: {where}: {value} is a recipe of {script}'s (its keys are its flags), which it reads with "
                f"--config: {script} --config {value} ... (accelerate launch's --config_file takes "
                "accelerate_configs/*.yaml)")
    if not options[name] and value is not None and str(value).strip().lower() in _FALSE:  # the advice would set it
        return (f"error: {where} set to {value} is accelerate launch's default (it runs without --{name}): remove "
                "it")
    given = f"--{name}" + (f" {value if value is not None else name.upper()}" if options[name] else "")
    alternative = "" if name == "config_file" else " (or set it in accelerate_configs/*.yaml)"
    return (f"error: {where} is an accelerate launch option: accelerate launch {given} {script} ..."
            f"{alternative}")


def is_recipe(path: Path, fields) -> bool:
    """Whether ``path`` reads as a recipe of the script with these ``fields`` rather than an accelerate config, for
    the hint of a --config_file given to the script: a mapping without ACCELERATE_KEYS with any of its field names
    (a typo or a launcher key beside them is still a recipe: --config names it); a file under recipes/ where it
    does not read."""
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError):  # ValueError: no UTF-8
        return "recipes" in path.parts
    if not isinstance(doc, dict) or any(k in doc for k in ACCELERATE_KEYS):
        return False
    return "recipes" in path.parts or any(str(k) in fields for k in doc)


def accelerate_config_error(path: Path, doc: dict, script: str | None, fields) -> str | None:
    """The one line for an accelerate config (what ``accelerate config`` writes: ACCELERATE_KEYS) given to ``script``
    as its recipe (--config), or None."""
    keys = [k for k in ACCELERATE_KEYS if k in doc and k not in fields]
    if not script or not keys:
        return None
    return (f"error: --config {path} is an accelerate config (it has {keys[0]}), not a recipe of {script}'s: "
            f"accelerate launch --config_file {path} {script} ...")


# PyYAML reads YAML 1.1: a plain 010 is octal (8) and 1:30 base 60 (90), where YAML 1.2 and a reader see 10 and a
# time; 09 is no octal number and stays the text '09' (int() then reads it as 9)
_OCTAL = re.compile(r"[-+]?0[0-7_]+")
_NUMBER_TAGS = ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")


class _Refused(Exception):
    """A --config document that PyYAML reads otherwise than its writer meant; str(): the one-line reason."""


class _StrictLoader(yaml.SafeLoader):
    """yaml.safe_load's reading less its silent surprises: a key given twice (the later value wins unseen: a recipe
    copied with ``lr: 0.4`` added at the top keeps the recipe's own ``lr``) and YAML 1.1's octal and base-60 numbers.
    A ``<<`` merge key still overrides what it merges (that is what it is for). ``texts``: the written text of each
    top-level value YAML reads as a number, a bool or a date, for a text field to take as written (``output_dir:
    2024_01_05`` is the int 20240105 to YAML, ``yes`` True)."""

    texts: dict

    def construct_document(self, node):
        self.texts, self._root = {}, node
        return super().construct_document(node)

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key, line = self.construct_object(key_node, deep=True), key_node.start_mark.line + 1
            if node is self._root and isinstance(value_node, yaml.ScalarNode) and value_node.style is None \
                    and value_node.tag not in ("tag:yaml.org,2002:str", "tag:yaml.org,2002:null"):
                self.texts[key] = value_node.value
            try:
                first = seen.setdefault(key, key_node)
            except TypeError:  # an unhashable key: SafeConstructor's own error names it
                continue
            if first is not key_node:  # by node, not line: a flow mapping {lr: 1, lr: 2} has both on one line
                at = first.start_mark.line + 1
                where = f"lines {at} and {line}" if at != line else f"line {line}"
                raise _Refused(f"key '{key}' is given twice ({where}); keep one")
            self._check_number(key, line, value_node)
        return super().construct_mapping(node, deep)

    def _check_number(self, key, line: int, node) -> None:
        if not isinstance(node, yaml.ScalarNode) or node.tag not in _NUMBER_TAGS:
            return
        text = node.value
        if ":" in text:
            kind, plain = "the base-60 number", "the number plainly"
        elif node.tag == _NUMBER_TAGS[0] and _OCTAL.fullmatch(text):
            digits = text.lstrip("+-").replace("_", "").lstrip("0") or "0"
            kind, plain = "the octal number", ("-" if text.startswith("-") else "") + digits
        else:
            return
        raise _Refused(f"key '{key}' at line {line}: YAML 1.1 reads {text} as {kind} "
                       f"{self.construct_object(node)}; write {plain}, or quote it if it is text")


def read_yaml(path: Path) -> tuple:
    """(the mapping of a --config file (empty: {}), the written text of its top-level values YAML reads as other
    than text: _StrictLoader.texts); a one-line SystemExit for a file that is missing, unreadable, not UTF-8, not
    valid YAML, not a mapping, or that gives a key twice or a number YAML 1.1 misreads (_StrictLoader)."""
    if not path.is_file():
        raise SystemExit(f"error: --config {path}: no such file")
    try:
        loader = _StrictLoader(path.read_text(encoding="utf-8"))  # a SafeLoader: no objects
        try:
            doc, texts = loader.get_single_data() or {}, getattr(loader, "texts", {})
        finally:
            loader.dispose()
    except _Refused as e:
        raise SystemExit(f"error: --config {path}: {e}") from None
    except OSError as e:
        raise SystemExit(f"error: --config {path}: cannot read it ({e.strerror or e}); check its permissions") from None
    except UnicodeDecodeError as e:
        raise SystemExit(f"error: --config {path}: not UTF-8 text (byte {e.start}: {e.object[e.start]:#04x}); save it "
                         "as UTF-8") from None
    except yaml.YAMLError as e:  # its str() spans lines: the problem, then a snippet with a caret
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        what = getattr(e, "problem", None) or " ".join(str(e).split())
        raise SystemExit(f"error: --config {path}: not valid YAML: {what}{at}; fix the file there") from None
    if not isinstance(doc, dict):
        raise SystemExit(f"error: --config {path}: expected a mapping of keys to values")
    return doc, texts


def parse_config(cls, argv: list[str] | None = None, description: str | None = None,
                 accelerate_script: str | None = None):
    """Build ``cls`` from ``--config YAML`` and ``--field value`` flags (``--flag`` alone sets a bool to true).
    ``accelerate_script``: the name of a script accelerate launch runs (train.py): accelerate launch's options given
    to it, as flags or --config keys, are refused with how to give them to the launcher, and --help says so."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    comments = field_comments(cls)
    parser = _Parser(description=description, allow_abbrev=False,
                     epilog=LAUNCH_HELP.format(script=accelerate_script) if accelerate_script else None,
                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--config", default=None, help="YAML file of overrides (a recipe); flags override it")
    for name, f in fields.items():
        base, _ = _base_type(hints[name])
        default = f.default if f.default is not dataclasses.MISSING else "required"
        help_text = (f.metadata or {}).get("help", comments.get(name, "")).replace("%", "%%")  # argparse formats %
        if base is bool:
            parser.add_argument(f"--{name}", nargs="?", const="true", default=argparse.SUPPRESS,
                                metavar="BOOL", help=f"{help_text} (default: {default})")
        else:
            parser.add_argument(f"--{name}", default=argparse.SUPPRESS, metavar=base.__name__.upper(),
                                help=f"{help_text} (default: {default})")
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        for at, token in enumerate(unknown if accelerate_script else []):
            flag, _, value = token.partition("=")
            following = unknown[at + 1] if at + 1 < len(unknown) and not unknown[at + 1].startswith("-") else None
            if flag.startswith("--") and (refused := launch_option_error(
                    flag[2:].replace("-", "_"), value or following, accelerate_script, fields, flag)):
                raise SystemExit(refused)
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")  # argparse's own words
    values: dict = {}
    if args.config:
        path = Path(args.config)
        loaded, texts = read_yaml(path)
        if refused := accelerate_config_error(path, loaded, accelerate_script, fields):
            raise SystemExit(refused)
        for key, value in loaded.items():
            if key not in fields:
                hint = accelerate_script and launch_option_error(  # the value as written: YAML 1.1 reads no as False
                    str(key), texts.get(key, value), accelerate_script, fields, f"--config {path}: key '{key}'")
                raise SystemExit(hint or f"error: --config {path}: unknown key '{key}' "
                                 f"(known: {', '.join(sorted(fields))})")
            if key in texts and _base_type(hints[key])[0] is str:  # a text field takes what was written
                value = texts[key]
            values[key] = _convert(value, hints[key], f"key '{key}' in {path}")
    for key, value in vars(args).items():
        if key != "config":
            values[key] = _convert(value, hints[key], f"--{key}")
    for name, f in fields.items():
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if required and values.get(name) in (None, ""):
            raise SystemExit(f"error: --{name} is required ({comments.get(name) or 'see --help'})")
    return cls(**values)
