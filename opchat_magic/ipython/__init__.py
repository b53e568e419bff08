"""The IPython front door: the magics (``magics.py``), the cell rewrite
(``transformer.py``) and the one-line form (``oneline.py``).

What they cite from the notebook ({In}/{Out}/{Err}, errors, values) is in
``opchat_magic.context``, shared with the panel. Nothing is imported here.
"""
