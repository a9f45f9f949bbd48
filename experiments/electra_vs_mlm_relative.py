"""electra_vs_mlm on relative positions: both objectives on configs/electra.py:positions=relative.

  python -m experiments.electra_vs_mlm_relative --out /tmp/evm_relative           # tiny, 3 seeds
  python -m experiments.electra_vs_mlm_relative --out /tmp/evm_relative --smoke   # minutes

With ELECTRA's absolute positions, ELECTRA-tiny's discriminator falls to the all-original prior
at ELECTRA-Small's learning rate (5e-4), so electra_vs_mlm runs tiny at 2e-4, where its recall
stays below 0.06. With transformers' relative_key_query distances read through a LayerNorm it
trains at 5e-4 (README, "ELECTRA at ELECTRA-Small's learning rate"). This sweep compares the
objectives there: the same cells, budgets and findings as electra_vs_mlm, BERT-MLM on the same
encoder, positions and learning rate.
"""
import dataclasses
import functools

from encoders.adaptation import finetune_ablation
from experiments import electra_vs_mlm

ABLATION = dataclasses.replace(
    electra_vs_mlm.ABLATION, name='electra_vs_mlm_relative',
    title='ELECTRA vs BERT-MLM at equal pretraining FLOPs, relative positions, topic task',
    base_config=functools.partial(electra_vs_mlm.base_config, positions='relative'),
    module='experiments.electra_vs_mlm_relative')


if __name__ == '__main__':
  finetune_ablation.run_script(ABLATION)
