"""The training half: from a config to trained weights, evaluations and samples.

- ``factory``: the edge where the ml_collections config stops; validates every field and builds
- ``options``: one frozen object of plain values per concern (data, process, network, loss, optimiser,
  sampler, evaluation, training loop), each able to build what it describes;
- ``trainer`` (``--mode train``), ``evaluate`` (``--mode eval``), ``sampling`` (``--mode sample``): the
  three end points; none imports another;
- what they share: ``streams`` (every random stream), ``workdir`` (file layout), ``checkpoint``
  (atomic, verified, strict), ``heldout`` (held-out loss and likelihood), ``generation`` (drawing and
  writing samples), ``inference`` (EMA weights for eval and sample), ``pipeline`` / ``datasets`` /
  ``data_loader`` (data), ``losses``, ``optim``, ``runtime`` (signals, metrics, GPU switches),
  ``distributed`` (``torchrun``), ``plots``.
"""
