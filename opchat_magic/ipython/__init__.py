"""The IPython side of opchat-magic: the magics (``magics.py``), the cell rewrite
(``transformer.py``), and what the front doors need from the kernel they live in
(references, cell errors, values, explain, one-line chat).

Nothing is imported here, so ``import opchat_magic.ipython.references`` stays cheap.
"""
