"""The MLM loss of every token of held-out text, an HTML page of it, and its change between checkpoints.

Each real token is masked exactly once: the tokens of a text are dealt (in a seeded random
order) into `passes` groups, and pass g replaces group g by [MASK] and reads the loss
-log p(true token) at those positions. With passes=7 about 14% of a text is masked at a time,
near pretraining's 15%. The same seed masks the same tokens for every model with the same
tokenizer, so two checkpoints' losses compare token by token.
"""
import dataclasses
import functools
import html

import jax
import jax.numpy as jnp
import numpy as np

from encoders import paths
from encoders.analysis import files, subject as subject_lib


@dataclasses.dataclass
class TokenLosses:
  encoded: subject_lib.Encoded
  loss: np.ndarray  # f32 [texts, length]: -log p(token) when masked; 0 where not scored.
  scored: np.ndarray  # bool [texts, length]: real, non-special tokens.


def mask_groups(scored: np.ndarray, passes: int, seed: int) -> np.ndarray:
  """int [texts, length]: the pass (0..passes-1) that masks each scored token, -1 elsewhere."""
  rng = np.random.default_rng(seed)
  groups = np.full(scored.shape, -1, np.int32)
  for row in range(len(scored)):
    positions = rng.permutation(np.flatnonzero(scored[row]))
    groups[row, positions] = np.arange(len(positions)) % passes
  return groups


@functools.lru_cache(maxsize=8)
def _masked_loss_fn(model):
  def masked_loss(params, input_ids, segment_ids, targets):
    logits = model.apply({'params': params}, input_ids, segment_ids)['mlm_logits']
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)  # [batch, length, vocab]
    return -jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]  # [batch, length]
  return jax.jit(masked_loss)


def masked_inputs(encoded: subject_lib.Encoded, groups: np.ndarray, group: int,
                  mask_id: int) -> np.ndarray:
  """input_ids with the tokens of pass `group` replaced by mask_id."""
  return np.where(groups == group, mask_id, encoded.input_ids).astype(np.int32)


def token_losses(subject: subject_lib.Subject, texts: list[str], max_length: int = 128,
                 passes: int = 7, seed: int = 0, batch_size: int = 32) -> TokenLosses:
  """Every real token's masked-LM loss (see the module docstring)."""
  if not subject.has_mlm_head:
    raise ValueError(f'{subject.name} has no MLM head: per-token MLM loss needs one.')
  tokenizer = subject.tokenizer
  encoded = subject_lib.encode(tokenizer, texts, max_length, length=max_length)
  scored = (encoded.segment_ids > 0) & ~np.isin(encoded.input_ids, tokenizer.special_ids)
  groups = mask_groups(scored, passes, seed)
  masked_loss = _masked_loss_fn(subject.model)
  loss = np.zeros(encoded.input_ids.shape, np.float32)
  for start in range(0, len(texts), batch_size):
    rows = slice(start, start + batch_size)
    batch = subject_lib.Encoded(*(a[rows] for a in dataclasses.astuple(encoded)))
    for group in range(passes):
      inputs = masked_inputs(batch, groups[rows], group, tokenizer.mask_id)
      group_loss = np.asarray(masked_loss(subject.params, inputs, batch.segment_ids,
                                          batch.input_ids))
      loss[rows] = np.where(groups[rows] == group, group_loss, loss[rows])
  return TokenLosses(encoded, loss, scored)


def mean_loss(losses: TokenLosses) -> float:
  return float(losses.loss[losses.scored].mean())


def _colour(value: float, scale: float) -> str:
  """Background for a value: white at 0, red as it grows to +scale, green to -scale."""
  strength = min(abs(value) / scale, 1.0)
  fade = int(255 * (1 - 0.85 * strength))
  return f'rgb(255,{fade},{fade})' if value >= 0 else f'rgb({fade},255,{fade})'


def _text_html(text: str, offsets: np.ndarray, values: np.ndarray, scored: np.ndarray,
               tokens: list[str], scale: float, unit: str) -> str:
  """The text with each scored token's characters on a background coloured by its value."""
  parts, cursor = [], 0
  for (start, end), value, is_scored, token in zip(offsets, values, scored, tokens):
    if not is_scored or end <= cursor:
      continue
    parts.append(html.escape(text[cursor:start]))
    parts.append(f'<span style="background:{_colour(value, scale)}" title="{html.escape(token)}: '
                 f'{value:+.2f} {unit}">{html.escape(text[max(start, cursor):end])}</span>')
    cursor = end
  parts.append(html.escape(text[cursor:]))
  return ''.join(parts)


PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto;line-height:1.7}}
p.text{{border-bottom:1px solid #ddd;padding-bottom:0.8em}} span{{border-radius:3px}}
.legend span{{padding:0 0.4em}}</style></head>
<body><h2>{title}</h2><p>{summary}</p><p class="legend">{legend}</p>{body}</body></html>
"""


def page(title: str, summary: str, texts: list[str], titles: list[str] | None,
         losses: TokenLosses, values: np.ndarray, tokenizer, scale: float, unit: str) -> str:
  """An HTML page: each text with its tokens coloured by `values` [texts, length]."""
  legend = ' '.join(f'<span style="background:{_colour(v, scale)}">{v:+.1f}</span>'
                    for v in np.linspace(-scale if values.min() < 0 else 0, scale, 7))
  body = []
  for i, text in enumerate(texts):
    tokens = [tokenizer.id_to_token(t) for t in losses.encoded.input_ids[i]]
    heading = f'<b>{html.escape(titles[i])}</b> ' if titles else ''
    body.append(f'<p class="text">{heading}' + _text_html(
        text, losses.encoded.offsets[i], values[i], losses.scored[i], tokens, scale, unit) + '</p>')
  return PAGE.format(title=html.escape(title), summary=summary, legend=f'{unit}: {legend}',
                     body='\n'.join(body))


def write(subject: subject_lib.Subject, texts: list[str], out: str, titles: list[str] | None = None,
          baseline: subject_lib.Subject | None = None, max_length: int = 128,
          passes: int = 7, seed: int = 0) -> dict:
  """token_loss.html (+ token_loss_diff.html against `baseline`: green = easier in `subject`)
  and token_loss.npy / token_loss_<baseline>.npy, input_ids.npy into `out`."""
  folder = files.folder(out)
  losses = token_losses(subject, texts, max_length, passes, seed)
  shown = texts_of(losses, texts)
  paths.save_npy(folder / 'token_loss.npy', losses.loss)
  paths.save_npy(folder / 'input_ids.npy', losses.encoded.input_ids)
  result = dict(model=subject.name, mean_loss=mean_loss(losses), tokens=int(losses.scored.sum()))
  (folder / 'token_loss.html').write_text(page(
      f'Per-token MLM loss: {subject.name}',
      f'Mean loss {result["mean_loss"]:.3f} nats over {result["tokens"]} tokens, each masked '
      f'once ({passes} passes). Hover a token for its loss.',
      shown, titles, losses, losses.loss, subject.tokenizer, 10.0, 'nats'))
  if baseline is not None:
    if baseline.tokenizer.fingerprint != subject.tokenizer.fingerprint:
      raise ValueError(f'{baseline.name} and {subject.name} have different tokenizers.')
    before = token_losses(baseline, texts, max_length, passes, seed)
    paths.save_npy(folder / 'token_loss_baseline.npy', before.loss)
    change = losses.loss - before.loss
    result.update(baseline=baseline.name, baseline_mean_loss=mean_loss(before),
                  easier_fraction=float((change[losses.scored] < 0).mean()))
    (folder / 'token_loss_diff.html').write_text(page(
        f'Per-token MLM loss change: {baseline.name} -> {subject.name}',
        f'Mean loss {result["baseline_mean_loss"]:.3f} -> {result["mean_loss"]:.3f} nats; '
        f'{result["easier_fraction"]:.0%} of the tokens got easier (green), the rest harder (red).',
        shown, titles, losses, change, subject.tokenizer, 5.0, 'nats change'))
  files.save_json(folder / 'token_loss.json', result)
  return result


def texts_of(losses: TokenLosses, texts: list[str]) -> list[str]:
  """The texts cut where their truncated encoding ends (the page shows what was scored)."""
  ends = [offsets[scored].max(initial=0) for offsets, scored in
          zip(losses.encoded.offsets[..., 1], losses.scored)]
  return [text[:end] for text, end in zip(texts, ends)]
