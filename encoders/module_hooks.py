"""Weights attached to a model's linear modules by path, outside the family's code.

LoRA (encoders/adaptation/lora.py) and bottleneck adapters (encoders/adaptation/adapters.py) add
small weights to some linear modules of an encoder (query, value, the FFN output, ...) without
editing any family's modules: `apply` runs the model under flax's `nn.intercept_methods`, and a
module whose path holds weights in the `extra` tree has its output `y = module(x)` replaced by
`hook(weights, x, y, module)`. Modules are named by the suffix of their path ('query',
'attention/output', 'mlp/output'), so BERT, RoBERTa, ELECTRA (fine-tuned as BERT), ALBERT's shared
groups (one set of extra weights per shared module, as PEFT wraps a shared torch module once) and a
new family with its own names all work unchanged.

The extra tree mirrors the parameter tree, under one key per method: LoRA's weights of
`encoder/layers/layer_0/attention/query` are at
extra['encoder']['layers']['layer_0']['attention']['query']['lora']. `union` of the two
trees is then one tree whose paths say where everything sits (layer-wise lr decay and
weight decay read the paths), and `split` takes it apart again.
"""
from typing import Callable, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from encoders.config import ConfigError

Path = tuple[str, ...]


def linear_modules(model: nn.Module, params) -> dict[Path, tuple[tuple[int, ...], tuple[int, ...]]]:
  """{module path: (input dims, output dims) of its kernel} for every module called with a 'kernel'.

  A module maps x [*batch, *in] to y [*batch, *out] with a kernel [*in, *out] (Dense:
  [in, out]; an attention projection: [hidden, heads, head_dim] or [heads, head_dim,
  hidden]), so len(in) = (x.ndim - y.ndim + kernel.ndim) / 2. Traced with abstract
  shapes (jax.eval_shape): nothing is computed. `params` may be abstract.
  """
  found = {}

  def record(next_fun, args, kwargs, context):
    y = next_fun(*args, **kwargs)
    module_params = context.module.variables.get('params', {})
    if context.method_name == '__call__' and 'kernel' in module_params and args:
      kernel_shape = module_params['kernel'].shape
      num_in = (args[0].ndim - y.ndim + len(kernel_shape)) // 2
      found[context.module.path] = (tuple(kernel_shape[:num_in]), tuple(kernel_shape[num_in:]))
    return y

  def run(params):
    with nn.intercept_methods(record):
      return model.apply({'params': params}, jnp.zeros((1, 8), jnp.int32))

  jax.eval_shape(run, params)
  return found


def encoder_root(params) -> Path:
  """('encoder',) for a task model's params, () for a bare encoder's."""
  return ('encoder',) if 'encoder' in params else ()


def select(modules: Sequence[Path], targets: Sequence[str], root: Path) -> list[Path]:
  """The modules under `root` whose path ends with one of `targets` ('query', 'mlp/output').

  Every target must name at least one module; a target that names none is a ConfigError
  listing the names there are.
  """
  inside = sorted(path[len(root):] for path in modules if path[:len(root)] == root)
  chosen = set()
  for target in targets:
    matched = [path for path in inside
               if '/'.join(path) == target or '/'.join(path).endswith('/' + target)]
    if not matched:
      names = sorted({'/'.join(path[-2:]) for path in inside})
      raise ConfigError(f'config.peft.targets: {target!r} names no linear module of the encoder; '
                        f'its modules end with {names}.')
    chosen.update(matched)
  return [root + path for path in sorted(chosen)]


def at(tree, path: Path):
  """tree[path[0]][path[1]]..., or None where the path does not exist."""
  for key in path:
    if not isinstance(tree, dict) or key not in tree:
      return None
    tree = tree[key]
  return tree


def target_modules(model: nn.Module, params, targets: Sequence[str]) -> dict:
  """{path: (kernel input dims, output dims)} of the `targets` modules of `model`'s encoder."""
  linear = linear_modules(model, params)
  return {path: linear[path] for path in select(linear, targets, encoder_root(params))}


def apply(method, model: nn.Module, params, extra: dict, *args, deterministic: bool = True,
          rngs=None, **kwargs):
  """`model.apply` with each module that has weights at extra[path][method.key] returning
  `method.hook(weights, x, y, module, deterministic)` instead of its output y."""
  def intercept(next_fun, call_args, call_kwargs, context):
    y = next_fun(*call_args, **call_kwargs)
    if context.method_name != '__call__':
      return y
    weights = at(extra, context.module.path + (method.key,))
    if weights is None:
      return y
    return method.hook(weights, call_args[0], y, context.module, deterministic)

  with nn.intercept_methods(intercept):
    return model.apply({'params': params}, *args, deterministic=deterministic, rngs=rngs,
                       **kwargs)


def split(tree, selected: Callable[[Path], bool]) -> tuple[dict, dict]:
  """(the leaves whose path `selected` accepts, the others), each a nested dict."""
  flat = flax.traverse_util.flatten_dict(tree)
  chosen = {path: value for path, value in flat.items() if selected(path)}
  rest = {path: value for path, value in flat.items() if not selected(path)}
  return (flax.traverse_util.unflatten_dict(chosen), flax.traverse_util.unflatten_dict(rest))


def union(*trees) -> dict:
  """The nested dicts merged into one; a leaf path in two of them is an error."""
  flat = {}
  for tree in trees:
    for path, value in flax.traverse_util.flatten_dict(tree).items():
      if path in flat:
        raise ValueError(f'union: {"/".join(path)} is in two trees.')
      flat[path] = value
  return flax.traverse_util.unflatten_dict(flat)


def split_extra(tree, key: str) -> tuple[dict, dict]:
  """A union of parameters and extra weights under `key` -> (parameters, extra weights)."""
  extra, params = split(tree, lambda path: key in path)
  return params, extra
