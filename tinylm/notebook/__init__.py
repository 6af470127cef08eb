"""tinylm from a notebook: ``tinylm.train``, ``tinylm.check_attention``, ``tinylm.load`` and
``tinylm.compare`` (``api``); what they return shows itself in the cell (``display``)."""
