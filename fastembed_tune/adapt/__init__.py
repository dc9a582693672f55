"""Adapters on frozen embeddings: adapt a model whose weights you do not own (a hosted API).

The embedding model stays frozen; a small network learns, from (query, relevant document) pairs, to
move its vectors so that a query lands nearer its documents. By default only the query side is
adapted, so a corpus already embedded (and indexed) needs no re-embedding.

- :mod:`~fastembed_tune.adapt.sources`: where the frozen vectors come from (an OpenAI-compatible
  endpoint, a local model, precomputed vectors), each text embedded once through the store;
- :mod:`~fastembed_tune.adapt.api_client`: the OpenAI-compatible endpoint's client;
- :mod:`~fastembed_tune.adapt.adapter`: the adapter itself, applied with numpy, saved with its ONNX graph;
- :mod:`~fastembed_tune.adapt.training`: training it on the cached vectors;
- :mod:`~fastembed_tune.adapt.workflow`: the ``adapt`` command, with ``run``'s report and gate.

Import from those modules; this package re-exports nothing.
"""
