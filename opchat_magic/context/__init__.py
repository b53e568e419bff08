"""The notebook as context: what a prompt can cite from the kernel it runs in.

``references`` resolves ``{name}``, ``{In[N]}``, ``{Out[N]}``, ``{Err[N]}``,
``{Err}``; ``cell_errors`` records the error each cell raised; ``values``
turns a notebook value into bounded prompt text or an image; ``explain``
builds the ``%opchat_explain`` request. Both front doors (the magics and the
panel) use these; none of them imports a front door. Nothing is imported here,
so each module loads on its own.
"""
