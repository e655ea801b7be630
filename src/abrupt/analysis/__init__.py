"""The paper's interpretability analyses; each module is one analysis with a `run` (numbers) and a
`plot` (figures). `registry.ANALYSES` lists them by their directory name."""
