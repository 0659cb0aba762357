"""Reading a run configuration: a YAML preset, ``--set`` overrides, and validation, before any work starts.

    cfg = load_config("configs/tiny.yaml", overrides=["dpo.beta=0.2"])
    cfg = load_config("tiny")                       # a preset shipped with the package, by name

Unknown keys ("did you mean"), wrong types, impossible values, keys TRL or PEFT lack, values they reject,
and settings the installed TRL would silently ignore all fail here with one line that names where the value
came from: the YAML file, or the ``--set`` that gave it. Training sections pass their remaining keys through
to TRL's SFTConfig / DPOConfig / RewardConfig and PEFT's LoraConfig (``PASSTHROUGH``), so every option those
libraries have works without being declared again in ``hhalign.config.schema``.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import difflib
import re
import types
import typing
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from hhalign.config.schema import METHODS, VARIANTS, RunConfig, Variant, study_variants
from hhalign.errors import ConfigError

# section path -> (module, class): the library config each training section feeds.
PASSTHROUGH = {
    "pretrain": ("trl", "SFTConfig"),
    "sft": ("trl", "SFTConfig"),
    "dpo": ("trl", "DPOConfig"),
    "rm": ("trl", "RewardConfig"),
    "dpo.lora": ("peft", "LoraConfig"),
    "kto": ("trl", "KTOConfig"),
    "kto.lora": ("peft", "LoraConfig"),
    "orpo": ("trl.experimental.orpo", "ORPOConfig"),  # experimental in TRL: imported only where a config uses it
    "orpo.lora": ("peft", "LoraConfig"),
    "simpo": ("trl.experimental.cpo", "CPOConfig"),
    "simpo.lora": ("peft", "LoraConfig"),
}
# sections checked against their library only when they are set or a variant uses them (importing
# trl.experimental warns, and a run of the study's four should not)
_ON_USE = ("kto", "orpo", "simpo")
# what a section's library config is given by hhalign itself, whatever the config says: SimPO is CPO's simpo loss
# without its behaviour-cloning term (cpo_alpha 0, which a config may raise for CPO-SimPO)
FIXED = {"simpo": {"loss_type": "simpo"}}
DEFAULTS = {"simpo": {"cpo_alpha": 0.0}}
# Keys hhalign sets itself per stage: a user value would be overwritten, so it is refused.
_RESERVED = {"output_dir", "resume_from_checkpoint", "do_train", "do_eval"}
# Settings the installed TRL accepts but ignores (recent TRL made label_smoothing a no-op outside these losses).
_LABEL_SMOOTHING_LOSSES = ("robust", "exo_pair", "aot", "aot_unpaired")
# Values that the libraries accept but that can only be a mistake: (key, lower bound, strict).
_BOUNDS = {
    "learning_rate": (0.0, True), "num_train_epochs": (0.0, True), "per_device_train_batch_size": (1, False),
    "gradient_accumulation_steps": (1, False), "beta": (0.0, True), "r": (1, False), "lora_alpha": (0.0, True),
    "lora_dropout": (0.0, False), "max_length": (1, False), "warmup_steps": (0, False), "weight_decay": (0.0, False),
}
_SIMPLE = (int, float, bool, str)
_EXPONENT_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


# ----------------------------------------------------------------------------- loading


def preset_names() -> list[str]:
    """The presets shipped inside the package (configs/*.yaml)."""
    return sorted(p.name for p in resources.files("hhalign.configs").iterdir() if p.name.endswith(".yaml"))


def resolve_preset(path: str | Path) -> Path:
    """``path`` itself when it exists; else a shipped preset of that name (``tiny``, ``configs/tiny.yaml``)."""
    p = Path(path)
    if p.is_file():
        return p
    name = p.name if p.suffix in (".yaml", ".yml") else f"{p.name}.yaml"
    if name in preset_names():
        return Path(str(resources.files("hhalign.configs") / name))
    raise ConfigError(f"config file not found: {p}. Give a YAML file, or a preset shipped with hhalign: "
                      f"{', '.join(n.removesuffix('.yaml') for n in preset_names())}.")


def load_config(path: str | Path | None = None, overrides: list[str] | None = None, grid: list[str] | None = None,
                **top: Any) -> RunConfig:
    """Read a YAML preset (or the defaults when ``path`` is None), apply ``key=value`` overrides (``--set``), then a
    sweep point's (``--grid``), validate; an error names the one that gave the faulty value."""
    where = str(path) if path else "<defaults>"
    raw = read_yaml(path) if path is not None else {}
    given = [("--set", item) for item in overrides or []] + [("--grid", item) for item in grid or []]
    for _, item in given:
        apply_override(raw, item)
    for k, v in top.items():
        if v is not None:
            raw[k] = v
    try:
        return _build(RunConfig, raw, "")
    except ConfigError as e:
        raise ConfigError(f"{_origin(e, where, given)}: {e}", e.key) from None


def read_yaml(path: str | Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A config file's mapping; ``extends: OTHER`` (a preset's name, or a path beside the file) starts from OTHER's
    mapping, this file's sections merged over it key by key (a list, ``variants`` too, replaces the other's)."""
    p = resolve_preset(path)
    try:
        raw = yaml.load(p.read_text(encoding="utf-8"), Loader=_UniqueKeys) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        raise ConfigError(f"{path}: not valid YAML: {getattr(e, 'problem', None) or str(e).splitlines()[0]}{where}") from e
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(raw).__name__}")
    parent = raw.pop("extends", None)
    if parent is None:
        return raw
    if not isinstance(parent, str):
        raise ConfigError(f"{path}: 'extends' must name a config (a preset or a YAML file), got {parent!r}", "extends")
    beside = p.parent / parent
    target = beside if beside.is_file() else Path(parent)
    if p.resolve() in seen:
        raise ConfigError(f"{path}: 'extends' comes back to this file ({' -> '.join(str(s) for s in (*seen, p))})", "extends")
    merged = _merge(read_yaml(target, (*seen, p.resolve())), {k: v for k, v in raw.items() if k != "variants"})
    return merged | ({"variants": raw["variants"]} if "variants" in raw else {})


class _UniqueKeys(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (PyYAML keeps the last one silently: a variant
    declared twice would lose the first)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"'{key}' is given twice in one mapping", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _origin(e: ConfigError, where: str, given: list[tuple[str, str]]) -> str:
    """The --set (or --grid) item that gave the faulty key (the last one, as it wins), else the file."""
    if e.key:
        for flag, item in reversed(given):
            key = item.partition("=")[0].strip()
            if key == e.key or key.startswith(f"{e.key}.") or e.key.startswith(f"{key}."):
                return f"{flag} {item}"
    return where


def apply_override(raw: dict[str, Any], item: str) -> None:
    """``dpo.lora.r=16`` -> raw["dpo"]["lora"]["r"] = 16 (the value parsed as YAML)."""
    if "=" not in item:
        raise ConfigError(f"--set expects key=value (e.g. dpo.beta=0.2), got '{item}'")
    key, _, value = item.partition("=")
    parts = key.strip().split(".")
    node = raw
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {item}: '{part}' is not a section")
    try:
        node[parts[-1]] = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {item}: the value is not valid YAML ({str(e).splitlines()[0]})") from e


def from_dict(raw: dict[str, Any], where: str = "<dict>") -> RunConfig:
    try:
        return _build(RunConfig, raw, "")
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}", e.key) from None


def _build(cls: type, raw: Any, prefix: str, library: str | None = None) -> Any:
    """The dataclass ``cls`` from its raw mapping; ``prefix`` names its keys in errors, ``library`` is the section
    whose pass-through class it feeds (default: the prefix itself; a variant's settings feed their method's)."""
    section = library if library is not None else prefix.rstrip(".")
    shown = prefix.rstrip(".")
    if not isinstance(raw, dict):
        raise ConfigError(f"'{shown or 'top level'}' must be a mapping, got {raw!r}", shown or None)
    types_ = _field_types(cls)
    passthrough = section in PASSTHROUGH
    own: dict[str, Any] = {}
    args: dict[str, Any] = {}
    for key, value in raw.items():
        if key in types_ and key != "args":
            own[key] = value
        elif passthrough:
            args[key] = value
        else:
            allowed = ", ".join(k for k in types_ if k != "args")
            close = _close_matches(key, types_)
            raise ConfigError(f"unknown key '{prefix}{key}'." + (f" Did you mean {close}?" if close else "")
                              + f" Allowed keys here: {allowed}", f"{prefix}{key}")
    kwargs: dict[str, Any] = {}
    for key, value in own.items():
        tp = types_[key]
        if cls is RunConfig and key == "variants":
            continue  # after the method sections they refer to (_variants)
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _build(tp, value if value is not None else {}, f"{prefix}{key}.", f"{section}.{key}" if section else key)
        else:
            kwargs[key] = _coerce(value, tp, f"{prefix}{key}")
    if passthrough:
        if args or section.split(".")[0] not in _ON_USE or library is not None:
            _check_passthrough(section, args, shown)
        kwargs["args"] = args
    if cls is RunConfig:
        kwargs["variants"] = _variants(raw.get("variants"), raw)
    return cls(**kwargs)


def _variants(value: Any, raw: dict[str, Any]) -> dict[str, Variant]:
    """``variants:`` as a list of the study's names or a mapping of declared variants, each with its method's
    section built with its own settings over it (errors name ``variants.NAME.KEY``)."""
    if value is None:
        return {}
    if isinstance(value, str):
        value = [value]
    if isinstance(value, list):
        return study_variants(value)
    if not isinstance(value, dict) or not value:
        raise ConfigError(f"variants must be a list of {', '.join(VARIANTS)} or a mapping of name -> settings, got {value!r}", "variants")
    out = {}
    for name, spec in value.items():
        key = f"variants.{name}"
        spec = {} if spec is None else spec
        if not isinstance(spec, dict):
            raise ConfigError(f"'{key}' must be a mapping (method:, from:, label:, settings), got {spec!r}", key)
        method, start, label = spec.get("method"), spec.get("from"), spec.get("label")
        for k, v in (("method", method), ("from", start), ("label", label)):
            if v is not None and not isinstance(v, str):
                raise ConfigError(f"'{key}.{k}' must be a string, got {v!r}", f"{key}.{k}")
        overrides = {k: v for k, v in spec.items() if k not in ("method", "from", "label")}
        variant = Variant(str(name), method, start, label, overrides)
        if method in METHODS and overrides:
            cls = _field_types(RunConfig)[method]
            variant.section = _build(cls, _merge(raw.get(method) or {}, overrides), f"{key}.", method)
        elif method in METHODS and method in _ON_USE and not raw.get(method):
            _check_passthrough(method, {}, method)  # the library exists and takes its defaults
        out[str(name)] = variant
    return out


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` on top of ``base``, mappings merged key by key (a variant's ``lora: {r: 4}`` keeps the rest of lora)."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; ints are accepted where floats are expected."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for opt in options:
            if opt is type(None):
                continue
            try:
                return _coerce(value, opt, key)
            except ConfigError as e:
                errors.append(str(e))
        if len(errors) == 1:
            raise ConfigError(errors[0], key)
        names = " or ".join(_type_name(o) for o in options)
        raise ConfigError(f"'{key}' must be {names}, got {value!r} ({type(value).__name__})", key)
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if isinstance(value, str) and item_tp is str:
            value = [value]  # `loss_type: ipo` means [ipo], as TRL reads it
        if not isinstance(value, list):
            raise ConfigError(f"'{key}' must be a list of {item_tp.__name__}, got {value!r}", key)
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str) and _EXPONENT_FLOAT.fullmatch(value.strip()):
        return float(value)  # YAML 1.1 (PyYAML) reads 1e-3 as a string: it wants 1.0e-3
    if tp is bool and isinstance(value, bool):
        return value
    if tp in (int, str) and isinstance(value, tp) and not isinstance(value, bool):
        return value
    if origin is dict and isinstance(value, dict):
        item_tp = typing.get_args(tp)[1] if typing.get_args(tp) else None
        if dataclasses.is_dataclass(item_tp):  # score.judges: NAME -> a section of its own
            return {k: _build(item_tp, v if v is not None else {}, f"{key}.{k}.", "") for k, v in value.items()}
        return value
    raise ConfigError(f"'{key}' must be {_type_name(tp)}, got {value!r} ({type(value).__name__})", re.sub(r"\[\d+\]$", "", key))


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "null"
    if typing.get_origin(tp) is list:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    return getattr(tp, "__name__", str(tp))


def _close_matches(key: str, options: Any) -> str:
    matches = difflib.get_close_matches(key, list(options), n=3, cutoff=0.6)
    return " or ".join(f"'{m}'" for m in matches)


# ----------------------------------------------------------------------------- pass-through


def library_class(section: str) -> type:
    module, name = PASSTHROUGH[section]
    mod = __import__(module, fromlist=[name])
    return getattr(mod, name)


def _check_passthrough(section: str, args: dict[str, Any], shown: str | None = None) -> None:
    """Fail on keys the library class lacks, values it rejects, and settings it would ignore (``shown``: how the
    keys are named in errors, a variant's ``variants.NAME`` for its own settings)."""
    cls = library_class(section)
    where = shown or section
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in args:
        if key in _RESERVED or key in FIXED.get(section, {}):
            why = f"is {FIXED[section][key]!r} by definition of the method" if key in FIXED.get(section, {}) else "is set by hhalign per stage"
            raise ConfigError(f"'{where}.{key}' {why}; remove it", f"{where}.{key}")
        if key not in fields:
            close, own = _close_matches(key, fields), sorted(_own_keys(section))
            raise ConfigError(
                f"unknown key '{where}.{key}': neither an hhalign setting nor a field of "
                f"{cls.__module__.split('.')[0]}.{cls.__name__} (installed version)."
                + (f" Did you mean {close}?" if close else "")
                + (f" hhalign's own keys here: {', '.join(own)}." if own else "")
                + " `hhalign config --keys` lists them all.", f"{section}.{key}")
    hints = typing.get_type_hints(cls)
    for key, value in args.items():
        if _is_simple(hints.get(key)):
            args[key] = value = _coerce(value, hints[key], f"{where}.{key}")
        if key in _BOUNDS and isinstance(value, (int, float)) and not isinstance(value, bool):
            low, strict = _BOUNDS[key]
            if value < low or (strict and value == low):
                raise ConfigError(f"'{where}.{key}' is {value}; it must be {'>' if strict else '>='} {low}", f"{where}.{key}")
    try:
        if section.endswith(".lora"):
            cls(**args)
        else:
            # bf16 left unset follows the hardware at train time (hhalign.train), so the check is hardware-free
            cls(**{"output_dir": "/tmp/hhalign-config-check", "report_to": "none", "bf16": False, "use_cpu": True,
                   **checkpointing_default(cls, args), **library_args(section, args)})
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{cls.__name__} rejects the '{where}' settings: {e}", where) from e
    if section == "kto" and args.get("loss_type", "kto") != "apo_zero_unpaired":
        # TRL's KTOTrainer refuses both when it starts; said here, before any stage runs
        if args.get("per_device_train_batch_size", 8) <= 1:
            raise ConfigError(f"'{where}.per_device_train_batch_size' is {args['per_device_train_batch_size']}: KTO estimates its KL "
                              "term from the other examples of a batch, so it needs 2 or more (raise gradient_accumulation_steps "
                              "instead to keep the step)", f"{where}.per_device_train_batch_size")
        if args.get("train_sampling_strategy", "sequential") != "sequential":
            raise ConfigError(f"'{where}.train_sampling_strategy' is {args['train_sampling_strategy']!r}: KTO pairs each example "
                              "with its neighbour for the KL term, which needs 'sequential' (hhalign shuffles the examples "
                              "once, with the run's seed)", f"{where}.train_sampling_strategy")
    if section == "dpo" and args.get("label_smoothing"):
        losses = args.get("loss_type", ["sigmoid"])
        losses = [losses] if isinstance(losses, str) else losses
        if not any(loss in _LABEL_SMOOTHING_LOSSES for loss in losses):
            raise ConfigError(
                f"{where}.label_smoothing={args['label_smoothing']} has no effect with loss_type={losses} in the "
                f"installed TRL; it only acts with {', '.join(_LABEL_SMOOTHING_LOSSES)} "
                "(conservative DPO is loss_type: robust).", f"{where}.label_smoothing")


def library_args(section: str, args: dict[str, Any]) -> dict[str, Any]:
    """A section's pass-through settings as its library config takes them: the method's defaults, the settings, and
    what the method fixes (``DEFAULTS``, ``FIXED``)."""
    return {**DEFAULTS.get(section, {}), **args, **FIXED.get(section, {})}


def checkpointing_default(cls: type, args: dict[str, Any]) -> dict[str, Any]:
    """TRL 1.16 gives its configs ``gradient_checkpointing=True`` as a default of its own, under the name that
    transformers 5 renamed ``activation_checkpointing`` (and warns about whenever the old one is set): pass TRL's
    default under the new name, unless the config names either (the old name then warns, as it should)."""
    names = {f.name for f in dataclasses.fields(cls)}
    if "activation_checkpointing" in names and not {"gradient_checkpointing", "activation_checkpointing"} & args.keys():
        default = next(f.default for f in dataclasses.fields(cls) if f.name == "gradient_checkpointing")
        return {"activation_checkpointing": default}
    return {}


def _is_simple(tp: Any) -> bool:
    """Annotations we can check strictly: int/float/bool/str, lists of them, and Optional/Union of those."""
    if tp in _SIMPLE:
        return True
    origin = typing.get_origin(tp)
    if origin is list:
        return all(a in _SIMPLE for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return all(a is type(None) or _is_simple(a) for a in typing.get_args(tp))
    return False


def _own_keys(section: str) -> set[str]:
    cls: type = RunConfig
    for part in section.split("."):
        cls = _field_types(cls)[part]
    return {f.name for f in dataclasses.fields(cls) if f.name != "args"}


# ----------------------------------------------------------------------------- documentation


def _default(f: dataclasses.Field) -> Any:
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]


def key_rows() -> list[tuple[str, Any, tuple[str, ...] | None, str]]:
    """Every hhalign config key as (dotted key, default, choices or None, help), from the schema itself: what
    ``hhalign config --keys`` prints and the docs' configuration reference lists."""
    rows: list[tuple[str, Any, tuple[str, ...] | None, str]] = []

    def walk(cls: type, prefix: str) -> None:
        types_ = _field_types(cls)
        for f in dataclasses.fields(cls):
            if f.name == "args":
                continue
            if dataclasses.is_dataclass(types_[f.name]):
                walk(types_[f.name], f"{prefix}{f.name}.")
                continue
            rows.append((f"{prefix}{f.name}", _default(f), f.metadata.get("choices"), f.metadata.get("help", "")))
            item = typing.get_args(types_[f.name])[1] if typing.get_origin(types_[f.name]) is dict else None
            if dataclasses.is_dataclass(item) and f.name != "variants":  # score.judges: each entry a section of its own
                walk(item, f"{prefix}{f.name}.NAME.")
        section = prefix.rstrip(".")
        if section in PASSTHROUGH:
            module, name = PASSTHROUGH[section]
            rows.append((f"{prefix}<any field of {module}.{name}>", None, None, "passed through unchanged"))

    walk(RunConfig, "")
    return rows


def describe_keys() -> str:
    """Every hhalign knob with its default and help, for ``hhalign config --keys``."""
    lines = []
    for key, default, choices, help_ in key_rows():
        if key.endswith(">"):
            lines.append(f"{key}\n    {help_}")
        else:
            lines.append(f"{key} = {default!r}\n    {help_}" + (f" (one of: {', '.join(choices)})" if choices else ""))
    return "\n".join(lines)


def add_section_options(parser: argparse.ArgumentParser, cls: type, names: tuple[str, ...], keep_defaults: bool = True) -> None:
    """``--max-new-tokens`` etc. for the named fields of a section, typed and documented from the field itself
    (help text, choices from its check, default). ``keep_defaults=False`` leaves unset options None, so the
    caller can tell an explicit flag from a default (``hhalign metrics`` reads a run's own thresholds)."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    types_ = _field_types(cls)
    for name in names:
        f, tp = fields[name], types_[name]
        default = _default(f)
        kind = {int: int, float: float, str: str}.get(tp, str)
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, type=kind, default=default if keep_defaults else None,
                            choices=f.metadata.get("choices"), help=f"{f.metadata.get('help', '')} (default: {default})")


def section_from_args(cls: type, args: argparse.Namespace, **fixed: Any) -> Any:
    """The section with every option the user gave (None = not given: the field's default)."""
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if getattr(args, f.name, None) is not None}
    return cls(**{**given, **fixed})
