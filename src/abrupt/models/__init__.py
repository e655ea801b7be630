"""The models: plain PyTorch with named hook points (hooks.py). `layers.py` holds what they share,
`bert.py` the paper's encoder, `gpt.py` the decoder (`Decoder`) with its matrix model (the
paper's variant) and sequence model (the follow-up's), `groups.py` the named parameter groups,
`registry.py` the architectures by `model.arch`. A model knows no task: what it is trained on and
how it is scored are the task's (tasks/)."""
