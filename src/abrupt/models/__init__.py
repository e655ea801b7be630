"""The models: plain PyTorch with named hook points (hooks.py). `layers.py` holds what they share,
`bert.py` the paper's encoder, `gpt.py` its decoder variant, `seqgpt.py` the decoder of the
follow-up's sequence tasks, `groups.py` the named parameter groups, `registry.py` the
architectures by `model.arch`."""
