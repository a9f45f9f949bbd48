"""Does a checkpoint read word order? `encoders/analysis/word_order.py` on each WORKDIR:STEP:
its validation losses on the held-out batches as they are and with each row's words shuffled
within their segment (masks move with their tokens). ELECTRA checkpoints also get the
discriminator's ROC AUC. A markdown table, one row per WORKDIR:STEP:

  PYTHONPATH=. python docs/electra_lr/word_order.py WORKDIR:STEP ... > OUT.md
"""
import sys

from encoders.analysis import word_order


def main(specs: list[str]) -> None:
  print('| workdir | step | MLM loss: as is / shuffled | RTD loss: as is / shuffled | ROC AUC: as is / shuffled |')
  print('|---|---:|---|---|---|')
  for spec in specs:
    workdir, step = spec.rsplit(':', 1)
    result = word_order.measure(workdir, int(step))
    plain, shuffled = result['as_is'], result['shuffled']
    pair = lambda key, digits: (f'{plain[key]:.{digits}f} / {shuffled[key]:.{digits}f}'
                                if key in plain else '')
    print(f'| {workdir} | {step} | {pair("mlm_loss", 3)} | {pair("rtd_loss", 4)} | '
          f'{pair("rtd_auc", 3)} |', flush=True)


if __name__ == '__main__':
  main(sys.argv[1:])
