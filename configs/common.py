"""Pieces shared by every family config: the size table and argument parsing.

A family config (`configs/bert.py`, `configs/roberta.py`, ...) is a Python file
whose `get_config(arg)` returns an `ml_collections.ConfigDict`; `arg` is the text
after the colon on the command line, e.g. `--config configs/bert.py:base` or
`--config configs/bert.py:size=mini,runlocal=True`.
"""
import ml_collections

# Turc et al. 2019 ("Well-Read Students Learn Better", Table 6) and Devlin et al.
# 2019 (BERT base/large). Heads are hidden/64, the MLP is 4x hidden.
SIZES = {
    #          layers, hidden
    'tiny':   (2, 128),
    'mini':   (4, 256),
    'small':  (4, 512),
    'medium': (8, 512),
    'base':   (12, 768),
    'large':  (24, 1024),
}


# `tiny` trains its own tokenizer on the embedded corpus (~0.9M tokens): a small vocabulary
# fits that corpus and halves the tiny model's FLOPs per sequence.
TINY_VOCAB_SIZE = 8192


def parse_arg(arg: str | None, **defaults):
  """Parses 'base' or 'size=base,runlocal=True' into a ConfigDict over `defaults`.

  A bare first word sets the first default (the size). Unknown keys raise, so a
  typo never becomes a silent no-op. Values take the type of their default.
  """
  parsed = ml_collections.ConfigDict(dict(defaults))
  if not arg:
    return parsed
  first_key = next(iter(defaults))
  for i, item in enumerate(arg.split(',')):
    item = item.strip()
    if not item:
      continue
    if '=' not in item:
      if i != 0:
        raise ValueError(f'Config argument {item!r} needs the form key=value '
                         f'(known keys: {", ".join(defaults)}).')
      key, value = first_key, item
    else:
      key, value = (s.strip() for s in item.split('=', 1))
    if key not in defaults:
      raise ValueError(f'Unknown config argument {key!r} in {arg!r}; '
                       f'known: {", ".join(defaults)}.')
    default = defaults[key]
    if isinstance(default, bool):
      if value.lower() not in ('true', 'false', '1', '0'):
        raise ValueError(f'Config argument {key}={value!r} is not a boolean.')
      parsed[key] = value.lower() in ('true', '1')
    elif default is None:
      parsed[key] = value
    else:
      parsed[key] = type(default)(value)
  return parsed


def size_fields(size: str) -> dict:
  """The model fields that a named size sets."""
  if size not in SIZES:
    raise ValueError(f'Unknown model size {size!r}; known sizes: {", ".join(SIZES)}.')
  num_layers, hidden_size = SIZES[size]
  return dict(num_layers=num_layers, hidden_size=hidden_size,
              num_heads=max(hidden_size // 64, 2),
              intermediate_size=4 * hidden_size)
