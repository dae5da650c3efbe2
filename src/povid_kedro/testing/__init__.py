"""Helpers for testing and benchmarking against the project without paid APIs or real data, in the
spirit of ``numpy.testing`` and ``pandas.testing``.

- :mod:`povid_kedro.testing.chat_server`: an OpenAI-compatible chat-completions server on
  loopback (standard library only) with scripted replies, errors, latency and rate limits, to
  dry-run the API injector (``kedro run --pipeline inject_hallucinations`` pointed at its URL);
- :mod:`povid_kedro.testing.synthetic`: ground-truth samples and an image loader made in memory.
"""
