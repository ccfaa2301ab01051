"""Remote updates: the update room beside the frame path.

Everything that fetches, verifies, stores and activates a release lives
here; the frame path (pipeline, matcher) meets it at one door,
``Pipeline.swap_matcher``. Modules: ``config`` (the ``[update]`` section),
``commands`` (command schemas and the manifest policy), ``fetch``
(deadline-bounded HTTP(S)), ``store`` (the bundle store), ``updater`` (the
worker that ties them together).
"""
