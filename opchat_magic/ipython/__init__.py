"""The IPython side of opchat-magic: what the front doors need from the kernel they live in."""
