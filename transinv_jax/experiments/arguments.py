"""The config-argument grammar shared by every config file (``configs/<name>.py:<argument>``).

A config declares ``SCHEMA = {key: Key(...)}`` and calls ``parse_args(arg, SCHEMA, where)``.
The argument is comma separated; each token is ``key=value`` or a bare value (its short form,
as in the papers' commands: ``configs/exp2.py:emnist,mnist`` is
``configs/exp2.py:pretrain=emnist,finetune=mnist``). Every error has one format
(``argument_error``): the config file, the token, why, and the keys with their allowed values.
"""

import dataclasses

from transinv_jax.experiments.spec import ALIASES, DATASETS

# Said instead of "unknown" for tokens that are known elsewhere.
HINTS = {"mini": "the mini size is defined for configs/exp1.py and configs/exp2.py only; use "
                 "smoke here"}


@dataclasses.dataclass(frozen=True)
class Key:
  """One key of a config argument (``key=value``, or a bare value: its short form).

  Attributes:
    values: the allowed values (strings), or a type (``int``, ``float``) any value of which is
      allowed (the config may then refuse some with ``Args.error``).
    multi: whether the key may be given more than once (a list of values; [] = not given).
    default: a single key's value when not given.
    aliases: other spellings of values (``{"fmnist": "fashion_mnist"}``).
    positional: whether a bare value (no ``key=``) may fill this key.
    after: a bare value fills this key only once that key is set (exp2's ``pretrain,finetune``).
    kind: what a value is, for messages ("too many datasets"); a key of every dataset shows
      as ``<dataset>`` and the message lists them.
  """
  values: tuple | type
  multi: bool = False
  default: object = None
  aliases: dict = dataclasses.field(default_factory=dict)
  positional: bool = True
  after: str = ""
  kind: str = ""

  def accepts(self, token: str):
    """The value ``token`` names (aliases resolved, typed), or None if it names none."""
    if isinstance(self.values, type):
      try:
        return self.values(token)
      except ValueError:
        return None
    token = self.aliases.get(token, token)
    return token if token in self.values else None

  def describe(self, sep: str = "|") -> str:
    """The allowed values for messages: ``a|b``, ``<dataset>`` (all datasets) or ``<int>``."""
    if isinstance(self.values, type):
      return f"<{self.values.__name__}>"
    if self.kind == "dataset" and self.values == DATASETS:
      return f"<{self.kind}>"
    return sep.join(str(v) for v in self.values)


def dataset_key(values: tuple = DATASETS, **kwargs) -> Key:
  """A key naming a dataset (aliases ``emnist``, ``fmnist`` accepted)."""
  return Key(tuple(values), aliases=dict(ALIASES), kind="dataset", **kwargs)


def size_key(*sizes: str) -> Key:
  """The ``size`` key: ``paper`` (the default) or a smaller variant (``smoke``, ``mini``)."""
  return Key(tuple(sizes) + ("paper",), default="paper")


class Args(dict):
  """A parsed config argument: key -> value (a list for multi keys); ``args.key`` reads too."""

  def __init__(self, values: dict, arg: str, where: str, schema: dict, notes: tuple):
    super().__init__(values)
    self.arg, self.where, self.schema, self.notes = arg, where, schema, notes
    self.explicit = []  # the keys the argument set, in order

  def __getattr__(self, key):
    try:
      return self[key]
    except KeyError as e:
      raise AttributeError(key) from e

  def given(self, key: str) -> bool:
    """Whether the argument set ``key`` (a default does not count)."""
    return key in self.explicit

  def error(self, token: str, reason: str) -> ValueError:
    """The one error format: config file, the token, why, the keys and their values."""
    return argument_error(self.where, token, reason, self.schema, self.notes)


def argument_error(where: str, token: str, reason: str, schema: dict,
                   notes: tuple = ()) -> ValueError:
  """``<where>: '<token>': <reason>; keys: k=<values>, ...; datasets: ...; <notes>``."""
  keys = ", ".join(f"{k}={key.describe()}" + (" (repeatable)" if key.multi else "")
                   for k, key in schema.items())
  parts = [f"{where}: {token!r}: {reason}", f"keys: {keys}" if keys else "no keys"]
  kinds = {key.kind for key in schema.values()}
  if "dataset" in kinds:
    aliases = {}
    for alias, name in ALIASES.items():
      aliases.setdefault(name, []).append(alias)
    parts.append("datasets: " + ", ".join(
        f"{d} ({', '.join(aliases[d])})" if d in aliases else d for d in DATASETS))
  parts += list(notes)
  return ValueError("; ".join(parts))


def parse_args(arg: str | None, schema: dict, where: str, notes: tuple = ()) -> Args:
  """Parses a config argument with a config's schema: one grammar for every config file.

  ``arg`` is comma separated. Each token is ``key=value`` or a bare value (the short forms used
  in the papers' commands: ``emnist,mnist``, ``smoke``). A bare value fills the first
  positional key (in ``schema`` order) that accepts it, is not yet set (or is ``multi``) and
  whose ``after`` key is set: ``exp2.py:emnist,mnist`` is ``pretrain=emnist,finetune=mnist``.
  Case is ignored; a multi key given again adds a value.

  Args:
    arg: the text after ``configs/<file>.py:`` (None or "" = every default).
    schema: key -> ``Key``, in the order bare values fill them.
    where: the config file, for messages (``"configs/exp2.py"``).
    notes: further text for every error message (e.g. the sizes a key allows).

  Returns:
    The values: every key of ``schema``, multi keys as lists (deduplicated, in order).

  Raises:
    ValueError: in the one format (``argument_error``) for an unknown key or value, a value the
      key does not allow, or a key set twice.
  """
  result = Args({k: [] if key.multi else key.default for k, key in schema.items()},
                arg or "", where, schema, notes)
  explicit = result.explicit

  def put(name, value, token):
    key = schema[name]
    if key.multi:
      if value not in result[name]:
        result[name].append(value)
    elif name in explicit:
      raise result.error(token, f"{name} given twice")
    else:
      result[name] = value
    explicit.append(name)

  for token in (t.strip().lower() for t in (arg or "").split(",")):
    if not token:
      continue
    if "=" in token:
      name, _, text = (s.strip() for s in token.partition("="))
      if name not in schema:
        raise result.error(token, f"unknown key {name!r}")
      value = schema[name].accepts(text)
      if value is None:
        kind = schema[name].kind or "value"
        raise result.error(token, HINTS.get(text, f"unknown {kind} {text!r} for {name}"))
      put(name, value, token)
      continue
    fitting = [k for k, key in schema.items() if key.positional and key.accepts(token) is not None]
    open_ = [k for k in fitting
             if (schema[k].multi or k not in explicit)
             and (not schema[k].after or schema[k].after in explicit)]
    if open_:
      put(open_[0], schema[open_[0]].accepts(token), token)
    elif fitting and all(k in explicit for k in fitting):
      if len(fitting) == 1:
        raise result.error(token, f"{fitting[0]} given twice")
      forms = " or ".join(",".join(fitting[:i + 1]) for i in range(len(fitting)))
      raise result.error(arg or "", f"too many {schema[fitting[0]].kind or 'value'}s: give "
                         f"{forms}")
    elif fitting:
      raise result.error(token, f"{fitting[0]} comes after {schema[fitting[0]].after}")
    else:
      bare = dict.fromkeys(v for k in schema if schema[k].positional
                           for v in schema[k].describe(", ").split(", "))
      unknown = ("unknown dataset or argument" if "dataset" in {key.kind for key in
                 schema.values()} else "unknown argument")
      raise result.error(token, HINTS.get(token, f"{unknown} (short forms: {', '.join(bare)})"))
  return result


def keyed(arg: str | None, schema: dict, where: str) -> str:
  """``arg`` rewritten in keyed form (``emnist,mnist`` -> ``pretrain=emnist_letters,...``)."""
  parsed = parse_args(arg, schema, where)
  tokens = []
  for k, key in schema.items():
    if not parsed.given(k):
      continue
    for value in parsed[k] if key.multi else [parsed[k]]:
      tokens.append(f"{k}={value}")
  return ",".join(tokens)
