"""``kubectl kubequant``: a kubectl plugin for ModelOptimization objects.

:mod:`kubequant_kubectl.format` turns a ``status.result`` into the tables the plugin prints,
:mod:`kubequant_kubectl.plot` draws the candidates' size against quality (matplotlib, an
optional extra), :mod:`kubequant_kubectl.cli` is the ``kubectl-kubequant`` program.
"""
