"""A learner's own attention class (``model.attention=file.py:Class``): tinylm's way of meeting
the code our users wrote. Two rooms, the second resting on the first:

- what training needs: ``adapter`` (load the class, build it with the usual argument names,
  call it, read what it returns), ``calling`` (the mask convention that makes it causal),
  ``reference`` (its weights mapped onto tinylm's explicit attention) and ``module`` (the class
  inside a tinylm block);
- the teaching checklist that names its mistakes: ``checker`` (``tinylm check-attention``).

Importing this package loads nothing: import the module you need.
"""
