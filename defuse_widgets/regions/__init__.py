"""Distill: fit failure regions to the errors' codes (``distill.fit_regions`` -> ``RegionSet``),
say what lies inside one (``membership``), label them (``labels``: the ``Labeler`` protocol and
``as_labeler``) and audit and relabel the training images inside them (``audit``, ``relabels``)."""
