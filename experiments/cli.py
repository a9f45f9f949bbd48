"""Command-line parsing shared by the entry points: a bad `--config.*` override is one line.

absl reports its own flag errors as a usage line, but ml_collections raises the errors of
`--config.<field>=...` overrides (a misspelled field, a value of the wrong type) as plain
exceptions, which printed a traceback from inside the flag parser. Use
`app.run(main, flags_parser=cli.parse_flags)`.
"""
import sys

from absl import flags


def _innermost_message(error: BaseException) -> str:
  """ml_collections wraps the KeyError of a misspelled field in an AttributeError."""
  while error.args and isinstance(error.args[0], BaseException):
    error = error.args[0]
  return str(error.args[0]) if error.args else str(error)


def _offending(overrides: list[str], message: str) -> list[str]:
  """The overrides whose field is the name quoted in `message` (all of them if none is)."""
  quoted = message.split("'")[1] if message.count("'") >= 2 else None
  named = [arg for arg in overrides if quoted and arg.split('=', 1)[0].endswith(f'.{quoted}')]
  return named or overrides


def parse_flags(argv: list[str]) -> list[str]:
  """absl's parsing, with a `--config.*` override error printed as a message and exit code 2."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as error:
    sys.stderr.write(f'FATAL Flags parsing error: {error}\n'
                     'Pass --helpshort or --helpfull to see help on flags.\n')
  except (AttributeError, KeyError, TypeError, ValueError) as error:
    message = _innermost_message(error)
    overrides = _offending([arg for arg in argv[1:] if arg.startswith('--config.')], message)
    sys.stderr.write(f'Config override error ({" ".join(overrides)}): {message}\n')
  sys.exit(2)
