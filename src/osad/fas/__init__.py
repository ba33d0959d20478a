"""Face anti-spoofing by regularised fine-grained meta-learning (``task: fas``), one slice:

* :mod:`osad.fas.config`: the typed configuration (``FasConfig``);
* :mod:`osad.fas.frames`, :mod:`osad.fas.faces`, :mod:`osad.fas.digits`,
  :mod:`osad.fas.data`: frames, the embedded face and synthetic digits domains, and
  loading the source and target domains;
* :mod:`osad.fas.model`: the network F, D, M (``fas-net`` in :mod:`osad.models`);
* :mod:`osad.fas.methods`, :mod:`osad.fas.trainer`: the methods and the meta-learner;
* :mod:`osad.fas.evaluate`: the leave-one-domain-out evaluation and its files;
* :mod:`osad.fas.task`: the task the workflow runs (:class:`osad.tasks.Task`).

It imports nothing from :mod:`osad.attacks`, :mod:`osad.openset` or
:mod:`osad.distributed` (tests/fas/test_imports.py). Importing this package loads no
submodule; see docs/anti-spoofing.md.
"""
