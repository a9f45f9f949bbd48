"""Parses one README command's arguments the way its program will, and runs nothing.

  python tests/readme_flags.py python -m experiments.pretrain --config configs/bert.py:tiny ...

absl programs: the module runs as __main__ (defining its flags) with `app.run` replaced by
its flag parsing (the program's own `flags_parser` where it gives one), which loads `--config`
files and applies every `--config.<field>=<value>` override (an unknown flag or field, or a
value of the wrong type, is an error); `main` never runs. argparse programs: the module's
`parse_args(argv)`. Exits 0 when the arguments are accepted.
"""
import importlib
import importlib.util
import runpy
import sys

from absl import app


def module_and_arguments(words: list[str]) -> tuple[str, list[str]]:
  """('experiments.pretrain', [arguments]) of `python -m module ...` or `python path.py ...`."""
  if words[:2] == ['python', '-m']:
    return words[2], words[3:]
  if words[0] == 'python' and words[1].endswith('.py'):
    return words[1].removesuffix('.py').replace('/', '.'), words[2:]
  raise ValueError(f'not a python program: {words}')


def parse_only(main, argv=None, flags_parser=app.parse_flags_with_usage):
  """app.run without running main."""
  del main
  flags_parser(sys.argv if argv is None else argv)


def main() -> None:
  module_name, arguments = module_and_arguments(sys.argv[1:])
  # Imported once only: absl flags are defined by running the module.
  if 'def parse_args(' in importlib.util.find_spec(module_name).loader.get_source(module_name):
    importlib.import_module(module_name).parse_args(arguments)
  else:
    sys.argv = [module_name, *arguments]
    app.run = parse_only
    runpy.run_module(module_name, run_name='__main__', alter_sys=True)
  print(f'{module_name}: arguments accepted')


if __name__ == '__main__':
  main()
