"""``tinylm check-attention``: is a learner's attention right? The teaching checklist, apart
from the adapter that training stands on (``tinylm.learner.adapter``):

- ``mistakes``: tinylm's reference with the learner's weights, and the classic mistakes named;
- ``checklist``: one function per check (shape, causal, attention, gradients, bf16);
- ``report``: what the checks found, which phrases its own lines and refusal;
- ``arguments``: the command line as key=value overrides (torch-free);
- ``command``: the command itself, printing the checklist.

Importing this package loads nothing: import the module you need.
"""
