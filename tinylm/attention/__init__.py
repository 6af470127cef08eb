"""Looking inside a model's attention, in one place:

- ``maps``: run a model on a probe text and read every head's attention (the explicit path);
- ``scores``: what a head does, in four numbers (pure functions of attention weights);
- ``pictures``: attention maps as labelled pictures and PNGs;
- ``ablation``: which heads matter, the loss rise without each;
- ``history``: the attention a run recorded, step by step, beside its checkpoints;
- ``explorer``: the interactive HTML page over one step or a whole run;
- ``render``: what ``scripts/attention.py`` does with them.

The TensorBoard callback that logs them during training is ``tinylm.callbacks.AttentionMaps``.
Importing this package loads nothing: import the module you need.
"""
